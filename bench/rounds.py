"""Paired rounds: a suite's compared paths measured several times, each ratio the median.

One wrk run per path makes a ratio of two runs some tens of seconds apart, and on a shared
2-core machine one of them may have had a neighbour the other had not (meshd-l7's CPU per
request read 35.4 and 26.0 µs in two runs of one day, nginx's 14.2 and 14.1). So the suites
measure the paths behind each ratio ``BENCH_ROUNDS`` times (3; 1-9), reference and meshd back
to back in each round, in the opposite order every other round; each round gives its ratios,
and the figure printed is their median. The rounds' values are printed too
(``INFO rounds <name>=<round 1>,<round 2>,... median <m>``): nothing is left out.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import TypeVar

from common import env_int

__all__ = ["median_figures", "paired_order", "rounds_from_env", "rounds_lines"]

T = TypeVar("T")


def rounds_from_env() -> int:
    """``BENCH_ROUNDS``: how many rounds (1-9, default 3; clamped)."""
    return env_int("BENCH_ROUNDS", 3, 1, 9)


def paired_order(items: Sequence[T], index: int) -> list[T]:
    """``items`` in round ``index``'s order: as given in even rounds, reversed in odd ones (so
    neither side of a pair is always measured first)."""
    return list(items) if index % 2 == 0 else list(reversed(items))


def median_figures(rounds: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Each figure's median over the rounds that have a value for it (None if none has);
    figures are named as in the first round."""
    if not rounds:
        return {}
    merged: dict[str, float | None] = {}
    for name in rounds[0]:
        values = [v for r in rounds if (v := r.get(name)) is not None]
        merged[name] = statistics.median(values) if values else None
    return merged


def rounds_lines(rounds: Sequence[Mapping[str, float | None]]) -> list[str]:
    """``INFO rounds <name>=<v1>,<v2>,... median <m>`` for each figure (``n/a`` for a missing
    value)."""
    medians = median_figures(rounds)
    lines = []
    for name, median in medians.items():
        values = ",".join(_fmt(r.get(name)) for r in rounds)
        lines.append(f"INFO rounds {name}={values} median {_fmt(median)}")
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
