"""argparse value types shared by the commands: a bad number is rejected by the parser (exit 2) with one line
naming the option, the allowed range and what was given, e.g. ``argument --threads: must be an integer >= 1
(got '0')``."""

from __future__ import annotations

import argparse
import math


def _number(kind, lo, hi, lo_open: bool = False):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = None
        ok = v is not None and not (isinstance(v, float) and not math.isfinite(v))
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v <= hi
        if not ok:
            what = "an integer" if kind is int else "a number"
            rng = []
            if lo is not None:
                rng.append(f"{'>' if lo_open else '>='} {lo:g}")
            if hi is not None:
                rng.append(f"<= {hi:g}")
            raise argparse.ArgumentTypeError(f"must be {what} {' and '.join(rng)} (got {text!r})")
        return v

    parse.__name__ = f"{kind.__name__}_range"
    return parse


positive_int = _number(int, 1, None)
nonneg_int = _number(int, 0, None)
positive_float = _number(float, 0, None, lo_open=True)
nonneg_float = _number(float, 0, None)
unit_float = _number(float, 0, 1)
port = _number(int, 1, 65535)
threads = _number(int, 1, 64)


def add_no_progress(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bars (they are drawn only on a terminal anyway: never into the journal)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars (bars show only on a terminal)")
