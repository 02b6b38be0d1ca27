"""The Prometheus text exposition format (version 0.0.4), written by hand.

Pure string building, no I/O: :class:`TextWriter` collects ``# HELP`` / ``# TYPE`` headers and
sample lines, :class:`LabelNames` renders a family's label sets. The output is what
prometheus-client's ``generate_latest`` writes for the same families (labels sorted by name,
values as Go prints floats, label values and help text escaped alike), so a scraper sees no
difference; meshd writes it itself because prometheus-client's package imports its HTTP
servers and clients (``http.server``, ``urllib.request``, ``wsgiref``, ...), ~3.5 MB of
resident memory in every scraped sidecar (issue 15).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal

__all__ = [
    "CONTENT_TYPE",
    "Kind",
    "LabelNames",
    "TextWriter",
    "escape_help",
    "escape_label_value",
    "format_value",
]

#: The ``Content-Type`` of the text format.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge", "histogram"]


def escape_label_value(value: str) -> str:
    """``value`` as it goes between a label's double quotes: backslash, double quote and line
    feed escaped with a backslash."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def escape_help(text: str) -> str:
    """``text`` as it goes on a ``# HELP`` line: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Go formats a float64 (``2.0``, ``1.9e+09``, ``+Inf``, ``NaN``)."""
    if type(value) is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"  # the common case, a small count: what the code below gives
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    # Go (Prometheus) writes an exponent from seven digits before the point on, Python's repr
    # only from 1e16 on: prometheus-client's conversion, kept so the text stays the same.
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


class LabelNames:
    """The label names of one family, and how a set of their values is written: sorted by
    name, as prometheus-client writes them."""

    __slots__ = ("_after_le", "_order")

    def __init__(self, names: Sequence[str]) -> None:
        order = sorted(range(len(names)), key=lambda i: names[i])
        self._order = [(i, names[i]) for i in order]
        # Where a histogram bucket's ``le`` label falls among them.
        self._after_le = sum(1 for name in names if name < "le")

    def pairs(self, values: Sequence[str]) -> list[str]:
        """``name="value"`` for each label, in name order."""
        return [f'{name}="{escape_label_value(values[i])}"' for i, name in self._order]

    def render(self, values: Sequence[str]) -> str:
        """``{name="value",...}``; empty for a family without labels."""
        return "{" + ",".join(self.pairs(values)) + "}" if self._order else ""

    def around_le(self, values: Sequence[str]) -> tuple[str, str, str]:
        """A histogram series' label sets: without ``le`` (``_sum``, ``_count``), and what
        comes before and after ``le="..."`` in a bucket's."""
        pairs = self.pairs(values)
        plain = "{" + ",".join(pairs) + "}" if pairs else ""
        before, after = pairs[: self._after_le], pairs[self._after_le :]
        return plain, "{" + "".join(p + "," for p in before), "".join("," + p for p in after) + "}"


class TextWriter:
    """Collects the lines of one exposition; :meth:`body` joins them."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[str] = []

    def header(self, name: str, help_text: str, kind: Kind) -> None:
        """A family's ``# HELP`` and ``# TYPE`` lines (``name`` as its samples are named:
        a counter's with ``_total``)."""
        self._lines.append(f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {kind}\n")

    def sample(self, name: str, labels: str, value: float) -> None:
        """One sample; ``labels`` from :meth:`LabelNames.render`."""
        self._lines.append(f"{name}{labels} {format_value(value)}\n")

    def histogram(
        self,
        name: str,
        labels: tuple[str, str, str],
        bounds: Sequence[str],
        counts: Sequence[int],
        total: float,
    ) -> None:
        """The ``_bucket`` (cumulative), ``_count`` and ``_sum`` samples of one series.

        ``labels`` from :meth:`LabelNames.around_le`; ``bounds`` the formatted upper bounds,
        ``+Inf`` last; ``counts`` the observations per bucket (not cumulative)."""
        plain, before, after = labels
        lines = self._lines
        cumulative = 0
        for bound, n in zip(bounds, counts, strict=True):
            cumulative += n
            lines.append(f'{name}_bucket{before}le="{bound}"{after} {format_value(cumulative)}\n')
        lines.append(f"{name}_count{plain} {format_value(cumulative)}\n")
        lines.append(f"{name}_sum{plain} {format_value(total)}\n")

    def body(self) -> bytes:
        """Everything written so far, UTF-8 encoded."""
        return "".join(self._lines).encode("utf-8")
