"""Training options are declared once (:class:`pipeline.config.policies.TrainingOptions`):
the sweep and variant fields, the copy into each variant, the packing decision and the
wiring all derive from that declaration."""

from __future__ import annotations

from pydantic import Field

from pipeline import config
from pipeline.apps.hooks import HOOKS
from pipeline.config import SweepConfig, Variant
from pipeline.config.policies import TRAINING_OPTIONS, StopPolicy, TrainingOptions, training_option
from pipeline.training.packing import plan_packs, why_unpacked
from pipeline.training.runner import RUNNER_OPTIONS

TINY = dict(name="opts", seeds=[0, 1], model={"depth": 2, "width": 8}, init=["kaiming", "xavier"], epochs=3)


def test_every_option_is_wired_exactly_once():
    assert set(TRAINING_OPTIONS) == set(TrainingOptions.option_fields())
    assert not set(HOOKS) & set(RUNNER_OPTIONS)
    assert sorted([*HOOKS, *RUNNER_OPTIONS]) == sorted(TRAINING_OPTIONS)


def test_sweep_and_variant_carry_the_declared_options():
    for model in (SweepConfig, Variant):
        assert set(model.option_fields()) == set(TRAINING_OPTIONS)
    cfg = config.validate({**TINY, "stop": {"window": 6, "every": 1}}, names=False)
    (v, *_) = config.expand(cfg)
    assert v.options() == {"stop": StopPolicy(window=6, every=1)}
    assert config.expand(config.validate(TINY, names=False))[0].options() == {}


def test_an_option_the_packed_trainer_does_not_run_is_never_packed():
    cfg = config.validate({**TINY, "stop": {"window": 6, "every": 1}}, names=False)
    variants = config.expand(cfg)
    assert why_unpacked(variants[0]) == "stop changes one member's control flow"
    assert all(len(p) == 1 for p in plan_packs(variants))
    plain = config.expand(config.validate(TINY, names=False))
    assert why_unpacked(plain[0]) is None
    assert [len(p) for p in plan_packs(plain)] == [4]


def test_a_new_option_declared_once_is_copied_and_decides_packing():
    """An option added to the declaration (here on a subclass) is an option everywhere:
    listed, set or not, and, unless it says the packed trainer runs it, unpacked."""

    class WithNew(Variant):
        new_rule: StopPolicy | None = Field(None, json_schema_extra=training_option())
        packed_rule: StopPolicy | None = Field(None, json_schema_extra=training_option(packed=True))

    base = config.expand(config.validate(TINY, names=False))[0].model_dump()
    v = WithNew(**base, new_rule={"window": 6})
    assert "new_rule" in WithNew.option_fields() and v.options() == {"new_rule": StopPolicy(window=6)}
    assert why_unpacked(v) == "new_rule changes one member's control flow"
    w = WithNew(**base, packed_rule={"window": 6})
    assert w.unpacked_options() == [] and why_unpacked(w) is None
