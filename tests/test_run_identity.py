"""Run ids survive new config keys: the rule is pinned on the demo sweep.

A key at its default is left out of a variant's identity (so each key added later
keeps every existing run id), execution-only keys never enter it, and the keys
hashed before the rule keep entering as they did.
"""

from pathlib import Path

from pydantic import Field

from pipeline import config
from pipeline.config import EXECUTION_ONLY, Resources, SnapshotPolicy, Variant, identity

ROOT = Path(__file__).resolve().parents[1]

# Computed with the code before the identity rule (commit 0e54e5c):
# a change here would make every re-run retrain the demo.
DEMO_IDS = [
    "mlp-d2-w32-tanh-kaiming-adam-s0-7e7b2ef2c7",
    "mlp-d2-w32-tanh-small_variance-adam-s0-e33b718d7a",
    "mlp-d3-w32-tanh-kaiming-adam-s0-21b4b00a49",
    "mlp-d3-w32-tanh-small_variance-adam-s0-e3ea430c52",
]
GPU_SHARE_IDS = [
    "mlp-d2-w512-relu-kaiming-sgd-s0-fc3a95ef41",
    "mlp-d2-w512-relu-kaiming-sgd-s1-cd15fa4c32",
    "mlp-d4-w512-relu-kaiming-sgd-s0-c862ab1b54",
    "mlp-d4-w512-relu-kaiming-sgd-s1-555270037b",
]


def _demo() -> list[Variant]:
    return config.expand(config.load(ROOT / "configs" / "demo.yaml"))


def test_demo_run_ids_are_pinned():
    assert [v.run_id for v in _demo()] == DEMO_IDS
    assert [v.run_id for v in config.expand(config.load(ROOT / "configs" / "gpu_share.yaml"))] == GPU_SHARE_IDS


def test_the_pinned_identity_still_holds_defaults_of_the_old_keys():
    """Keys hashed before the rule enter at their defaults too (momentum 0.0, noise 0.0)."""
    ident = _demo()[0].identity()
    assert ident["momentum"] == 0.0 and ident["weight_decay"] == 0.0
    assert ident["task"]["noise"] == 0.0 and ident["snapshot"]["dtype"] == "float32"
    assert "resources" not in ident and "sweep" not in ident


class _NextVariant(Variant):
    """A later schema: one trajectory key with a default, one execution-only key."""

    future_key: float = 0.0   # (was "prune": now a real key, issue 13)
    pack: str = Field("auto", json_schema_extra=EXECUTION_ONLY)


class _NextSnapshot(SnapshotPolicy):
    keep_optimizer_state: bool = False


def _upgrade(v: Variant, cls=_NextVariant, **extra) -> Variant:
    return cls(**{k: getattr(v, k) for k in Variant.model_fields}, **extra)


def test_a_new_key_at_its_default_keeps_every_run_id():
    for v in _demo():
        assert _upgrade(v).run_id == v.run_id
        assert _upgrade(v, pack="off").run_id == v.run_id            # execution-only: never


def test_a_new_key_away_from_its_default_changes_the_run_id():
    v = _demo()[0]
    moved = _upgrade(v, future_key=0.5)
    assert moved.run_id != v.run_id and moved.identity()["future_key"] == 0.5


def test_a_new_nested_key_follows_the_same_rule():
    v = _demo()[0]
    snap = v.snapshot.model_dump()
    same = v.model_copy(update={"snapshot": _NextSnapshot(**snap)})
    other = v.model_copy(update={"snapshot": _NextSnapshot(**snap, keep_optimizer_state=True)})
    assert identity(same) == identity(v) and same.run_id == v.run_id
    assert identity(other)["snapshot"]["keep_optimizer_state"] is True and other.run_id != v.run_id


def test_resources_never_enter_the_run_id():
    v = _demo()[0]
    assert v.model_copy(update={"resources": Resources(num_cpus=4.0, num_gpus=0.5)}).run_id == v.run_id


# Computed with the code of main before the training options were registered in one place
# (each option alone on the demo sweep; the first two variants): a run's id with an option
# set must not move when the option's declaration does.
OPTION_IDS = {
    "stop": ({"when": "converged", "rule": "v1", "window": 6, "every": 2},   # v1: the rule these ids had
             ["mlp-d2-w32-tanh-kaiming-adam-s0-741a75506a", "mlp-d2-w32-tanh-small_variance-adam-s0-799531d9ae"]),
    "on_bad_init": ({"action": "restart", "max_restarts": 1, "rule": "v1"},   # v1: the rule these ids had
                    ["mlp-d2-w32-tanh-kaiming-adam-s0-cc41242e08", "mlp-d2-w32-tanh-small_variance-adam-s0-462cfc399d"]),
    "prune": ({"method": "koopman", "sparsity": 0.5, "after": 8},
              ["mlp-d2-w32-tanh-kaiming-adam-s0-b00620b629", "mlp-d2-w32-tanh-small_variance-adam-s0-386440ce55"]),
    "accelerate": ({"window": 5, "every": 4, "horizon": 10},
                   ["mlp-d2-w32-tanh-kaiming-adam-s0-245d414b4d", "mlp-d2-w32-tanh-small_variance-adam-s0-38764c2254"]),
    "freeze": ({"after": 8, "every": 4},
               ["mlp-d2-w32-tanh-kaiming-adam-s0-282f5a719a", "mlp-d2-w32-tanh-small_variance-adam-s0-e22cd2680c"]),
}


def test_run_ids_with_a_training_option_are_pinned():
    data = config.load(ROOT / "configs" / "demo.yaml", names=False).model_dump(mode="json")
    for option, (value, ids) in OPTION_IDS.items():
        variants = config.expand(config.validate({**data, option: value}, names=False))
        assert [v.run_id for v in variants[:2]] == ids, option


def test_stop_rule_v2_gets_its_own_ids_and_v1_keeps_the_old_ones():
    """``stop:`` without ``rule`` is the second version now: a different stopping point is
    a different trajectory, so its ids differ from the runs ``stop:`` made before (v1)."""
    data = config.load(ROOT / "configs" / "demo.yaml", names=False).model_dump(mode="json")
    value, old_ids = OPTION_IDS["stop"]
    plain = {k: v for k, v in value.items() if k != "rule"}
    ids = {rule: [v.run_id for v in config.expand(config.validate({**data, "stop": {**plain, **extra}},
                                                                   names=False))[:2]]
           for rule, extra in (("default", {}), ("v2", {"rule": "v2"}), ("v1", {"rule": "v1"}))}
    assert ids["v1"] == old_ids
    assert ids["default"] == ids["v2"] and not set(ids["v2"]) & set(old_ids)


def test_bad_init_rule_v3_gets_its_own_ids_and_v1_keeps_the_old_ones():
    """``on_bad_init:`` without ``rule`` is the third detector now: a different restart
    decision is a different trajectory, so its ids differ from the runs made before (v1)."""
    data = config.load(ROOT / "configs" / "demo.yaml", names=False).model_dump(mode="json")
    value, old_ids = OPTION_IDS["on_bad_init"]
    plain = {k: v for k, v in value.items() if k != "rule"}
    ids = {rule: [v.run_id for v in config.expand(config.validate({**data, "on_bad_init": {**plain, **extra}},
                                                                   names=False))[:2]]
           for rule, extra in (("default", {}), ("v3", {"rule": "v3"}), ("v2", {"rule": "v2"}),
                               ("v1", {"rule": "v1"}))}
    assert ids["v1"] == old_ids
    assert ids["default"] == ids["v3"] and not set(ids["v3"]) & set(old_ids)
    assert not set(ids["v2"]) & (set(old_ids) | set(ids["v3"]))
