"""Text helpers of the dashboard views: numbers, percentages, ages and sparklines."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["age", "clock", "ms", "pct", "rate", "sparkline"]

_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 12) -> str:
    """The last ``width`` values as block characters scaled to their maximum."""
    tail = list(values)[-width:]
    if not tail:
        return ""
    top = max(tail)
    if top <= 0:
        return "▁" * len(tail)
    steps = len(_BARS) - 1
    return "".join(_BARS[max(1, round(v / top * steps))] if v > 0 else "▁" for v in tail)


def rate(value: float) -> str:
    """Requests per second: ``12.3``, ``1.2k``."""
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.1f}"


def pct(value: float | None) -> str:
    """A 0..1 share as a percentage (``-`` for none)."""
    return "-" if value is None else f"{value * 100:.1f}%"


def ms(value: float | None) -> str:
    """Milliseconds (``-`` for none)."""
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def age(seconds: float) -> str:
    """``4s``, ``3m``, ``2h``, ``5d`` (negative: ``in 3m``)."""
    if seconds < 0:
        return f"in {age(-seconds)}"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def clock(when: float) -> str:
    """``HH:MM:SS`` UTC of a Unix time."""
    import time

    return time.strftime("%H:%M:%S", time.gmtime(when))
