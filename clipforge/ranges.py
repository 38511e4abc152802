"""Ranges of numeric settings, declared beside a config field or a command-line flag.

A :class:`Range` is a set of allowed numbers that can say what it is, so the refusal of
a bad value is written from the declaration, on one line that names the flag::

    --lr: must be a positive finite number, got nan

Config fields declare one with ``option(2e-3, "peak learning rate", check=positive)``
(:mod:`clipforge.config`); command-line arguments take a ``type=`` converter made from
the same objects (:meth:`Range.reader`), so a config field and a plain flag share one
vocabulary. The named ranges below are the vocabulary; :func:`integers` and
:class:`Range` make others.

Every range of real numbers excludes NaN and the infinities: no setting of clipforge
means anything at either, and a NaN compares false with every bound, so a check written
as ``x <= 0`` would let it through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clipforge.errors import ClipforgeError


class OutOfRange(ClipforgeError):
    """A number outside the range its field or flag declares."""


def flag_name(field: str) -> str:
    """The flag of a config field: ``eval_every`` -> ``--eval-every``."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (either may be None: unbounded), each end
    included unless ``low_open`` / ``high_open``; integers only when ``integer``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        """What the range holds, as the end of "must be ...": "a positive finite number"."""
        lo, hi = self.low, self.high
        noun = "an integer" if self.integer else "a finite number"
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            noun = "an integer" if self.integer else "a number"
            return f"{noun} in {left}{_num(lo)}, {_num(hi)}{right}"
        if lo == 0 and self.low_open and not self.integer:
            return "a positive finite number"
        if lo is not None:
            return f"{noun} {'>' if self.low_open else '>='} {_num(lo)}"
        if hi is not None:
            return f"{noun} {'<' if self.high_open else '<='} {_num(hi)}"
        return noun

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (already a number) lies in the range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def refusal(self, flag: str, got: Any) -> OutOfRange:
        """The one-line error for ``got`` given to ``flag``."""
        # Numbers as typed (nan, -1); other text quoted, so an empty value shows as ''.
        if isinstance(got, str):
            shown = got.strip() if _is_number(got) else repr(got)
        elif isinstance(got, float) and math.isfinite(got):
            shown = _num(got)  # -1, not -1.0: as a user would have typed it
        else:
            shown = repr(got)
        return OutOfRange(f"{flag}: must be {self.describe()}, got {shown}")

    def check(self, value: Any, flag: str) -> None:
        """Refuse ``value`` unless the range holds it."""
        if not self.accepts(value):
            raise self.refusal(flag, value)

    def parse(self, raw: Any, flag: str) -> int | float:
        """``raw`` (text or a YAML number) as the range's kind of number, unchecked; text
        that is no such number is refused with the range's own message."""
        if isinstance(raw, bool):
            raise self.refusal(flag, raw)
        if isinstance(raw, (int, float)):
            if self.integer and isinstance(raw, float):
                if not raw.is_integer():
                    raise self.refusal(flag, raw)
                return int(raw)
            return raw if self.integer else float(raw)
        text = str(raw).strip()
        try:
            return int(text) if self.integer else float(text)
        except ValueError:
            raise self.refusal(flag, str(raw)) from None

    def read(self, raw: Any, flag: str) -> int | float:
        """``raw`` parsed and checked: what a command-line argument goes through."""
        value = self.parse(raw, flag)
        self.check(value, flag)
        return value

    def reader(self, flag: str) -> FlagReader:
        """An argparse ``type=`` converter for ``flag``."""
        return FlagReader(self, flag)


@dataclass(frozen=True)
class FlagReader:
    """``type=`` of an argparse argument: text -> a number in ``range``, else
    :class:`OutOfRange`.

    The error is a :class:`ClipforgeError`, not the ``ValueError`` argparse expects, on
    purpose: argparse would answer a ValueError with its usage block, and the CLI's rule
    is one line and exit code 2 for every user error.
    """

    range: Range
    flag: str

    def __call__(self, text: str) -> int | float:
        return self.range.read(text, self.flag)


def integers(low: int, high: int | None = None) -> Range:
    """The integers from ``low`` (to ``high``), both included."""
    return Range(low=low, high=high, integer=True)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# The vocabulary. Zero meaning "off" is a value of the range (non_negative, count0).
finite = Range()
positive = Range(low=0, low_open=True)
non_negative = Range(low=0)
fraction = Range(low=0, high=1, low_open=True)  # (0, 1]: a share that cannot be empty
probability = Range(low=0, high=1)  # [0, 1]
below_one = Range(low=0, high=1, high_open=True)  # [0, 1): decays, Adam's betas
count = integers(1)  # an integer >= 1: steps, sizes, threads
count0 = integers(0)  # an integer >= 0: 0 documented as "off" or "none"; seeds

__all__ = [
    "FlagReader",
    "OutOfRange",
    "Range",
    "below_one",
    "count",
    "count0",
    "finite",
    "flag_name",
    "fraction",
    "integers",
    "non_negative",
    "positive",
    "probability",
]
