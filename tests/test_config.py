from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert any(p.name == "demo.yaml" for p in ALL_CONFIGS)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_file_validates_and_expands(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), "each config starts with a comment giving its command"
    cfg = config.load(path)
    variants = config.expand(cfg)
    assert variants and len({v.run_id for v in variants}) == len(variants)


def test_grid_expansion_and_stable_ids(tiny_config):
    path = tiny_config(seeds=[0, 1], init=["kaiming", "zeros"])
    a = config.expand(config.load(path))
    b = config.expand(config.load(path))
    assert len(a) == 2 * 2 * 2  # depth × init × seeds
    assert [v.run_id for v in a] == [v.run_id for v in b]
    # the id depends on content: a different lr gives different ids
    c = config.expand(config.load(path, ["optimizer.lr=0.02"]))
    assert not {v.run_id for v in a} & {v.run_id for v in c}
    # resources do not change what is computed, hence not the id
    d = config.expand(config.load(path, ["resources.num_cpus=2"]))
    assert [v.run_id for v in a] == [v.run_id for v in d]
    # same replica index, same torch seed across variants; different replicas differ
    seeds = {(v.seed, v.torch_seed) for v in a}
    assert len({s for _, s in seeds}) == 2


def test_seed_count_expands(tiny_config):
    cfg = config.load(tiny_config(seeds=3))
    assert cfg.seeds == [0, 1, 2]


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"model": {"depth": 2, "widht": 3}}, "model.widht: unknown key"),
        ({"epochs": "many"}, "epochs:"),
        ({"epochs": 0}, "epochs:"),
        ({"optimizer": {"lr": -1.0}}, "optimizer.lr"),
        ({"snapshot": {"unit": "hour"}}, "snapshot.unit"),
        ({"task": {"name": "imagenet"}}, "task"),
        ({"task": {"name": "multiscale", "frequencies": [1.0], "amplitudes": [1.0, 2.0]}}, "same length"),
        ({"init": ["kaiming", "magic"]}, "init: unknown name 'magic'; known:"),
        ({"model": {"activation": "swish2"}}, "model.activation: unknown name"),
        ({"loss": "hinge3"}, "loss: unknown name"),
        ({"bogus": 1}, "bogus: unknown key"),
    ],
)
def test_bad_configs_name_the_path(tiny_config, updates, message):
    with pytest.raises(ConfigError) as err:
        config.load(tiny_config(**updates))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_name_lists_known_ones(tiny_config):
    with pytest.raises(ConfigError, match="kaiming"):
        config.load(tiny_config(init="magic"))


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "missing.yaml")


def test_overrides(tiny_config):
    cfg = config.load(tiny_config(), ["epochs=3", "model.depth=[1,2,3]"])
    assert cfg.epochs == 3 and cfg.model.depth == [1, 2, 3]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.load(tiny_config(), ["epochs"])


def test_resolved_config_round_trips(tiny_config):
    v = config.expand(config.load(tiny_config()))[0]
    again = config.Variant.model_validate(yaml.safe_load(yaml.safe_dump(v.model_dump(mode="json"))))
    assert again.run_id == v.run_id


def test_every_config_name_resolves_from_its_home_module():
    """``pipeline.config`` loads names lazily from a table: every exported name is in the
    table and resolves to the object its module defines (a name added to ``__all__`` but
    not to the table would fail here, not in a user's import)."""
    import importlib

    assert set(config.__all__) <= set(config._HOME)
    for name, home in config._HOME.items():
        assert getattr(config, name) is getattr(importlib.import_module(f"pipeline.config.{home}"), name), name
