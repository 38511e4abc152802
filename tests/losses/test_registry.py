"""Objectives register where they are defined; their options form the run's loss section."""

from __future__ import annotations

import dataclasses

import pytest

from clipforge.config import from_dict, option
from clipforge.losses import LOSSES, LossOptions
from clipforge.losses.registry import LossSpec, loss_options_class, register
from clipforge.train import TrainConfig


def test_every_objectives_options_are_in_the_run_config_section():
    section = {f.name for f in dataclasses.fields(LossOptions)}
    for name in LOSSES.names():
        spec = LOSSES.get(name)
        if spec.options is not None:
            own = {f.name for f in dataclasses.fields(spec.options)}
            assert own <= section, name
            assert all(f.metadata["help"] for f in dataclasses.fields(spec.options)), name
    assert {"teacher", "distill_weight", "hopfield_beta", "mixup_alpha"} <= section


def test_options_come_from_the_section_flat_keys_or_dotted_keys():
    a = from_dict(TrainConfig, {"loss": "distill", "loss_options": {"distill_weight": 0.3}})
    b = from_dict(TrainConfig, {"loss": "distill", "distill_weight": 0.3})
    c = from_dict(TrainConfig, {"loss": "distill", "loss.distill_weight": "0.3"})
    assert a == b == c and a.loss_options.distill_weight == 0.3
    obj = LOSSES.get("distill").build(
        from_dict(TrainConfig, {"loss.teacher": "ema", "distill_weight": 0.3})
    )
    assert obj.mode == "ema" and obj.weight == 0.3


def test_section_flags_and_their_flat_aliases():
    from clipforge.cli.main import build_parser

    args = build_parser().parse_args(
        ["train", "--loss.teacher", "ema", "--distill-weight", "0.3", "--loss.mixup_alpha", "2"]
    )
    over = {k: v for k, v in vars(args).items() if k.startswith("loss.")}
    cfg = from_dict(TrainConfig, over)
    assert (cfg.loss_options.teacher, cfg.loss_options.distill_weight) == ("ema", 0.3)
    assert cfg.loss_options.mixup_alpha == 2.0


def test_a_new_objective_with_one_option_needs_only_its_registration(monkeypatch):
    @dataclasses.dataclass
    class ToyOptions:
        toy_margin: float = option(0.25, "toy: a margin")

    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))
    register("toy", LossSpec(lambda o, run: o.toy_margin, options=ToyOptions))
    section = loss_options_class()
    assert {f.name: f.default for f in dataclasses.fields(section)}["toy_margin"] == 0.25
    with pytest.raises(ValueError, match="toy_margin"):
        register("toy2", LossSpec(lambda o, run: None, options=ToyOptions))
