"""Training options are registered once: one field of
:class:`pipeline.config.policies.TrainingOptions`, its :class:`TrainingOption` naming the
callback's builder (or that the trainers wire it) and whether the packed trainer runs it.
The sweep and variant fields, the copy into each variant, the packing decision and the
wiring all derive from that one declaration."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import ValidationError

from pipeline import config
from pipeline.apps.hooks import training_hooks
from pipeline.config import SweepConfig, Variant
from pipeline.config.base import _Strict
from pipeline.config.policies import TRAINING_OPTIONS, StopPolicy, TrainingOption, TrainingOptions
from pipeline.errors import ConfigError
from pipeline.storage.store import TrajectoryStore
from pipeline.training.packing import plan_packs, run_pack, why_unpacked
from pipeline.training.runner import TRAINER_OPTIONS, run_variant

TINY = dict(name="opts", seeds=[0, 1], model={"depth": 2, "width": 8}, init=["kaiming", "xavier"], epochs=3)


def test_every_option_is_wired_exactly_once():
    declared = TrainingOptions.option_fields()
    assert tuple(declared) == TRAINING_OPTIONS
    built = {name for name, opt in declared.items() if opt.build is not None}
    assert sorted(built) == ["accelerate", "freeze", "prune"]
    assert not built & set(TRAINER_OPTIONS)
    assert sorted([*built, *TRAINER_OPTIONS]) == sorted(TRAINING_OPTIONS)
    # the packed trainer runs the options the trainers wire; a callback never packs
    assert {name for name, opt in declared.items() if opt.packed} == set(TRAINER_OPTIONS)
    # the snapshots each needs before it acts (a sweep whose runs take fewer is refused)
    assert {name: opt.needs for name, opt in declared.items()} == {
        "stop": "window", "on_bad_init": "after", "prune": "after", "accelerate": "window", "freeze": "after"}


def test_sweep_and_variant_carry_the_declared_options():
    for model in (SweepConfig, Variant):
        assert set(model.option_fields()) == set(TRAINING_OPTIONS)
    cfg = config.validate({**TINY, "stop": {"window": 6, "every": 1}}, names=False)
    (v, *_) = config.expand(cfg)
    assert v.options() == {"stop": StopPolicy(window=6, every=1)}
    assert config.expand(config.validate(TINY, names=False))[0].options() == {}


def test_an_option_the_packed_trainer_does_not_run_is_never_packed():
    cfg = config.validate({**TINY, "prune": {"method": "magnitude", "sparsity": 0.5, "after": 3, "window": 3}},
                          names=False)
    variants = config.expand(cfg)
    assert why_unpacked(variants[0]) == "prune changes one member's control flow"
    assert all(len(p) == 1 for p in plan_packs(variants))
    stopped = config.expand(config.validate({**TINY, "stop": {"window": 6, "every": 1}}, names=False))
    assert why_unpacked(stopped[0]) is None and [len(p) for p in plan_packs(stopped)] == [4]
    plain = config.expand(config.validate(TINY, names=False))
    assert why_unpacked(plain[0]) is None
    assert [len(p) for p in plan_packs(plain)] == [4]


def test_the_plan_says_once_why_variants_train_unpacked(caplog):
    cfg = config.validate({**TINY, "freeze": {"after": 3, "window": 3}}, names=False)
    variants = config.expand(cfg)
    with caplog.at_level("INFO", logger="pipeline.training.packing"):
        plan_packs(variants)
    lines = [r.getMessage() for r in caplog.records if "unpacked" in r.getMessage()]
    assert lines == [f"4 variants train unpacked: freeze changes one member's control flow "
                     f"(first: {variants[0].run_id})"]


# ---------------------------------------------------------------- a new option, registered once
class CountConfig(_Strict):
    every: int = 1


class Counter:
    """A new option's callback: counts the snapshots it sees and records one event."""

    def __init__(self, cfg, layout):
        self.seen, self.every, self.size = 0, cfg.every, layout.size
        self.events: list = []

    def on_snapshot(self, flat, epoch, step):
        assert flat.shape == (self.size,)
        self.seen += 1
        if self.seen == 2:
            self.events.append({"kind": "count", "snapshot": 2, "epoch": int(epoch)})


def build_counter(cfg, model, optimizer, task, loss_fn, layout, device):
    return Counter(cfg, layout)


class WithCount(Variant):
    """The one registration a new callback option needs (here on a subclass)."""

    count: Annotated[CountConfig | None, TrainingOption(build=build_counter)] = None


class WithLost(Variant):
    """An option with no builder that no trainer wires: never silently ignored."""

    lost: Annotated[CountConfig | None, TrainingOption(packed=True)] = None


def _bases() -> list[dict]:
    return [v.model_dump() for v in config.expand(config.validate(TINY, names=False))[:2]]


def test_a_new_option_registered_once_is_parsed_reaches_the_trainer_and_is_not_packed(tmp_path):
    vs = [WithCount(**d, count={"every": 2}) for d in _bases()]
    v = vs[0]
    assert "count" in WithCount.option_fields() and v.options() == {"count": CountConfig(every=2)}
    with pytest.raises(ValidationError, match="count.evry"):
        WithCount(**_bases()[0], count={"evry": 2})                        # parsed by its model
    # the trainer builds its callback (one build per variant) ...
    assert [type(h) for h in training_hooks(v, None, None, None, None, _Layout(), "cpu")] == [Counter]
    # ... and a run with the option records what the callback saw
    out = run_variant(v, str(tmp_path / "s"))
    run = TrajectoryStore(str(tmp_path / "s")).open_run(v.run_id)
    assert out["status"] == "complete" and run.attrs["events"] == [{"kind": "count", "snapshot": 2, "epoch": 1}]
    # under packing: not declared packed, so each variant trains alone, with its callback
    assert why_unpacked(v) == "count changes one member's control flow"
    assert all(len(p) == 1 for p in plan_packs(vs))
    # a callback cannot be declared packed (its builder needs the variant's own model)
    with pytest.raises(TypeError, match="packed"):
        TrainingOption(build=build_counter, packed=True)


def test_an_option_nobody_wires_is_refused_not_ignored(tmp_path):
    vs = [WithLost(**d, lost={}) for d in _bases()]
    assert why_unpacked(vs[0]) is None                       # declared packed=True
    with pytest.raises(ConfigError, match="'lost' names no callback builder"):
        run_variant(vs[0], str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="'lost' names no callback builder"):
        run_pack(vs, str(tmp_path / "b"))
    assert TrajectoryStore(str(tmp_path / "b")).run_ids() == []


class _Layout:
    size = 0
