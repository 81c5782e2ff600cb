"""Shared statistics for every eval: Wilson intervals for rates, a paired bootstrap for differences.

Every accuracy factflow prints comes with its sample size and a 95% interval, so a reader can tell
a real difference from noise:

    fmt_rate(31, 50)  ->  "0.62 [0.48, 0.74] n=50"

Wilson (1927) rather than the normal approximation: it stays inside [0, 1] and is honest at 0/n and
n/n, which small eval samples hit often.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BootstrapResult",
    "wilson_interval",
    "paired_bootstrap",
    "fmt_rate",
    "fmt_interval",
    "mean_interval",
]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial rate.

        centre = (p + z²/2n) / (1 + z²/n)
        half   = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)

    n == 0 carries no information, so the interval is the whole of [0, 1].
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0/n and n/n the bound is exactly 0 (or 1): round-off gives e.g. 7e-18 for 0/48, which
    # put the rate outside its own interval (a negative error bar in the report's plot).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class BootstrapResult:
    """mean(a - b) with a percentile 95% interval and a two-sided bootstrap p-value."""

    mean_diff: float
    low: float
    high: float
    p_value: float
    n: int


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], iters: int = 10000, seed: int = 0, alpha: float = 0.05
) -> BootstrapResult:
    """Paired bootstrap of mean(a - b) over the same items (Efron & Tibshirani 1993, ch. 16).

    Items are resampled with replacement, keeping each a[i] with its b[i], so per-item difficulty
    cancels. The p-value is two-sided: twice the share of resampled means on the far side of zero,
    capped at 1 (a diff that is always exactly zero gives p = 1).
    """
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs equal-length paired scores, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("paired_bootstrap needs at least one paired item")
    if iters < 1:
        raise ValueError(f"paired_bootstrap needs iters >= 1, got {iters}")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(diff)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(iters, n))
    means = diff[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    below = float(np.mean(means <= 0.0))
    above = float(np.mean(means >= 0.0))
    p_value = min(1.0, 2.0 * min(below, above))
    return BootstrapResult(float(diff.mean()), float(low), float(high), p_value, n)


def fmt_interval(low: float, high: float) -> str:
    return f"[{low:.2f}, {high:.2f}]"


def fmt_rate(successes: int, n: int, z: float = 1.96) -> str:
    """'0.62 [0.48, 0.74] n=50'; 'n/a n=0' when nothing was scored."""
    if n == 0:
        return "n/a n=0"
    low, high = wilson_interval(successes, n, z)
    return f"{successes / n:.2f} {fmt_interval(low, high)} n={n}"


# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30; beyond 30 the normal 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)  # fmt: skip


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean of independent runs (e.g. seeds).

        half = t(0.975, k-1) * s / sqrt(k),   s = sample standard deviation of the k values

    With one value there is no spread to estimate: the interval is (nan, nan).
    """
    if not values:
        raise ValueError("mean_interval needs at least one value")
    k = len(values)
    mean = float(np.mean(values))
    if k == 1:
        return mean, math.nan, math.nan
    sd = float(np.std(values, ddof=1))
    t = _T975[k - 2] if k - 1 <= len(_T975) else 1.96
    half = t * sd / math.sqrt(k)
    return mean, mean - half, mean + half
