"""Percentiles, summaries and the printed tables shared by every benchmark."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: Sequence[float]) -> dict[str, float]:
    """n, median, p99, min, max of a list of samples (in their own unit)."""
    return {
        "n": len(samples),
        "median": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "min": min(samples) if samples else math.nan,
        "max": max(samples) if samples else math.nan,
    }


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    """``summary`` of samples in seconds, every figure but the count in milliseconds."""
    return {k: ms(v) if k != "n" else v for k, v in summary(samples).items()}


def median_of(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> float:
    return seconds * 1000.0


def fmt(value: object, digits: int = 2) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = ()) -> str:
    """A plain-text table; numbers right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()

    out = [f"\n== {title}", line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    out += [f"   {n}" for n in notes]
    return "\n".join(out)


def show(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = ()) -> None:
    print(table(title, headers, rows, notes), flush=True)


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (wall clock, perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = math.nan
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
