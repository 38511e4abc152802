"""Every number a user can set declares its range, and a value outside it is one line.

The walks are generic: every field of the run config, of its sections and of every
registered objective's options, and every argument of every subcommand of the parser. A
new numeric field or flag without a declared range fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing

import pytest

from clipforge.adapt import METHODS
from clipforge.cli.main import build_parser, main
from clipforge.config import _base_type, check_ranges, from_dict, range_of
from clipforge.errors import ClipforgeError
from clipforge.losses import LOSSES, parse_expression
from clipforge.models import ModelConfig, get_model_config
from clipforge.ranges import FlagReader, Range, count, flag_name, fraction, integers, positive
from clipforge.train.builders import check_config
from clipforge.train.config import TrainConfig

# What the walks feed every numeric field and flag: text as typed, and YAML's numbers.
BAD_TEXT = ("nan", "inf", "-inf", "0", "-1")
BAD_YAML = (math.nan, math.inf, 0, -1, 0.0, -1.5)


def _config_classes() -> list[type]:
    """The run config, its sections (recursively), every objective's and every adaptation
    method's options."""
    out: list[type] = []

    def visit(cls: type) -> None:
        if cls in out:
            return
        out.append(cls)
        for tp in typing.get_type_hints(cls).values():
            base, _ = _base_type(tp)
            if dataclasses.is_dataclass(base):
                visit(base)  # type: ignore[arg-type]

    visit(TrainConfig)
    visit(ModelConfig)  # reached through --model-args overrides
    for name in LOSSES.names():
        if LOSSES.get(name).options is not None:
            visit(LOSSES.get(name).options)  # type: ignore[arg-type]
    for name in METHODS.names():  # few-shot adaptation methods' options
        if METHODS.get(name).options is not None:
            visit(METHODS.get(name).options)  # type: ignore[arg-type]
    return out


def _numeric(tp: typing.Any) -> bool:
    base, _ = _base_type(tp)
    return base in (int, float)


FIELDS = [
    (cls, f.name)
    for cls in _config_classes()
    for f in dataclasses.fields(cls)
    if _numeric(typing.get_type_hints(cls)[f.name])
]


def _in_range(rng: Range, raw: str | float) -> bool:
    """Whether ``raw`` read as the range's kind of number lies in it."""
    value = float(raw)
    if rng.integer:
        return value.is_integer() and rng.accepts(int(value))
    return rng.accepts(value)


def _one_line_refusal(exc: ClipforgeError, flag: str, rng: Range) -> None:
    text = str(exc)
    assert "\n" not in text, text
    assert text.startswith(f"{flag}: must be {rng.describe()}, got "), text


def test_the_walk_finds_the_sections_and_options():
    names = {cls.__name__ for cls in _config_classes()}
    assert {"TrainConfig", "LossOptions", "DistillOptions", "MixupOptions"} <= names
    assert ("TrainConfig", "lr") in {(c.__name__, n) for c, n in FIELDS}


def test_every_numeric_field_declares_a_range():
    for cls in _config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            rng = range_of(cls, f.name)
            if _numeric(hints[f.name]):
                assert rng is not None, f"{cls.__name__}.{f.name} declares no range (check=...)"
                base, _ = _base_type(hints[f.name])
                assert rng.integer == (base is int), f"{cls.__name__}.{f.name}: kind of number"
                default = getattr(cls(), f.name)
                assert default is None or rng.accepts(default), f"{cls.__name__}.{f.name}"
            else:
                assert rng is None, f"{cls.__name__}.{f.name} is not a number"


@pytest.mark.parametrize("cls, name", FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_every_field_takes_its_range_or_refuses_in_one_line(cls, name):
    rng, flag = range_of(cls, name), flag_name(name)
    assert rng is not None
    for raw in (*BAD_TEXT, *BAD_YAML):
        try:
            cfg = from_dict(cls, {name: raw})
            check_ranges(cfg)
        except ClipforgeError as e:
            _one_line_refusal(e, flag, rng)
            assert not _in_range(rng, raw), (flag, raw)
        else:
            assert rng.accepts(getattr(cfg, name)), (raw, getattr(cfg, name))
            assert math.isfinite(float(raw)), f"{flag} took {raw!r}"
        # A config built in code (library use) meets the same check.
        if isinstance(raw, (int, float)):
            made = cls(**{name: raw})
            try:
                check_ranges(made)
            except ClipforgeError as e:
                _one_line_refusal(e, flag, rng)
            else:
                assert rng.accepts(raw)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _config_field(dest: str) -> tuple[type, str] | None:
    """The config field a ``train`` flag sets (``loss.distill_weight`` -> the section's)."""
    for cls, name in FIELDS:
        if dest in (name, f"loss.{name}") and cls in (TrainConfig, _loss_options()):
            return cls, name
    return None


def _loss_options() -> type:
    return typing.get_type_hints(TrainConfig)["loss_options"]


def test_every_numeric_argument_declares_a_range():
    for command, parser in _subcommands().items():
        for action in parser._actions:
            assert action.type not in (int, float), (
                f"{command} {action.option_strings}: a number without a range; "
                "use clipforge.config.add_number"
            )
            if isinstance(action.type, FlagReader):
                assert action.type.flag in action.option_strings


def _numeric_arguments() -> list[tuple[str, str, Range]]:
    """(command, flag, range) of every numeric argument, config flags of train included."""
    out = []
    for command, parser in _subcommands().items():
        for action in parser._actions:
            if isinstance(action.type, FlagReader):
                out.append((command, action.type.flag, action.type.range))
            elif action.option_strings and (field := _config_field(action.dest)):
                # A field without a range fails test_every_numeric_field_declares_a_range.
                if (rng := range_of(*field)) is not None:
                    out.append((command, action.option_strings[-1], rng))
    return out


ARGS = _numeric_arguments()


def test_the_argument_walk_sees_every_command_with_numbers():
    assert {c for c, _, _ in ARGS} == {
        "train",
        "eval",
        "caption",
        "synth",
        "shard",
        "curate",
        "adapt-fit",
        "adapt-eval",
        "adapt-bench",
        "adapt-compose",
        "wise",
        "stretch",
        "upcycle",
        "export",
        "embed",
        "index",
        "search",
        "serve",
        "link",
    }
    assert ("train", "--distill-weight") in {(c, f) for c, f, _ in ARGS}


@pytest.mark.parametrize("command, flag, rng", ARGS, ids=[f"{c} {f}" for c, f, _ in ARGS])
def test_every_argument_takes_its_range_or_refuses_in_one_line(
    command, flag, rng, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # a train run without --out would write under runs/ here
    action = next(a for a in _subcommands()[command]._actions if flag in a.option_strings)
    for raw in BAD_TEXT:
        if isinstance(action.type, FlagReader):
            try:
                value = action.type(raw)
            except ClipforgeError as e:
                _one_line_refusal(e, flag, rng)
            else:
                assert rng.accepts(value) and math.isfinite(float(raw)), (flag, raw)
                continue  # accepted: running the command would do real work
        elif _in_range(rng, raw):
            continue
        # Refused by the command line itself: exit 2, one line, nothing written. The
        # `=` form, as argparse reads "-inf" after a flag as another flag.
        assert main([command, f"{flag}={raw}"]) == 2, (command, flag, raw)
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and f"{flag}: must be {rng.describe()}" in err, err
        assert list(tmp_path.iterdir()) == [], (command, flag, raw)


def test_check_config_checks_the_ranges_of_sections():
    cfg = TrainConfig()
    cfg.loss_options.mixup_alpha = -1.0  # type: ignore[attr-defined]
    with pytest.raises(ClipforgeError, match=r"^--mixup-alpha: must be a positive finite"):
        check_config(cfg)


def test_ranges_describe_themselves():
    assert positive.describe() == "a positive finite number"
    assert fraction.describe() == "a number in (0, 1]"
    assert count.describe() == "an integer >= 1"
    assert integers(2).describe() == "an integer >= 2"
    assert Range(low=0).describe() == "a finite number >= 0"
    assert Range(low=0, high=1, high_open=True).describe() == "a number in [0, 1)"
    assert not positive.accepts(math.nan) and not positive.accepts(True)
    with pytest.raises(ClipforgeError, match=r"^--lr: must be a positive finite number, got nan$"):
        positive.read("nan", "--lr")
    with pytest.raises(ClipforgeError, match=r"^--n: must be an integer >= 1, got 'many'$"):
        count.read("many", "--n")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("clip+nan*uniformity", "weight of 'uniformity' must be a finite number >= 0, got nan"),
        ("clip+inf*alignment", "got inf"),
        ("clip+-0.5*uniformity", "got -0.5"),
        ("0*clip", "at least one weight must be positive"),
    ],
)
def test_loss_expression_weights(text, needle):
    with pytest.raises(ClipforgeError, match=r"^--loss ") as info:
        parse_expression(text)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_zero_weight_term_is_watched_not_trained():
    assert parse_expression("clip+0*alignment") == [(1.0, "clip"), (0.0, "alignment")]


@pytest.mark.parametrize("arg", ["vision.layers=-1", "text.mlp_ratio=nan", "embed_dim=0",
                                 "vision.norm_eps=inf"])  # fmt: skip
def test_model_args_meet_their_ranges(arg):
    key, value = arg.split("=")
    with pytest.raises(ClipforgeError, match=rf"^model arg {key}: must be"):
        get_model_config("tiny", {key: value})
