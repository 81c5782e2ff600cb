"""Pure-logic checks of evals/stats.py against published values."""

from __future__ import annotations

import pytest

from factflow.evals.stats import fmt_rate, paired_bootstrap, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Brown, Cai & DasGupta (2001) / Newcombe (1998) worked examples, z = 1.96.
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_empty_and_bad_input() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(-1, 10)


def test_wilson_narrows_with_n_and_z() -> None:
    lo1, hi1 = wilson_interval(50, 100)
    lo2, hi2 = wilson_interval(500, 1000)
    assert hi2 - lo2 < hi1 - lo1
    lo99, hi99 = wilson_interval(50, 100, z=2.576)
    assert lo99 < lo1 and hi99 > hi1


def test_fmt_rate() -> None:
    assert fmt_rate(31, 50) == "0.62 [0.48, 0.74] n=50"
    assert fmt_rate(0, 0) == "n/a n=0"


def test_paired_bootstrap_clear_difference() -> None:
    a = [1.0] * 40 + [0.0] * 10
    b = [0.0] * 40 + [1.0] * 10
    r = paired_bootstrap(a, b, iters=2000, seed=1)
    assert r.mean_diff == pytest.approx(0.6)
    assert 0.0 < r.low < 0.6 < r.high <= 1.0
    assert r.p_value < 0.01
    assert r.n == 50


def test_paired_bootstrap_no_difference_and_determinism() -> None:
    a = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    r = paired_bootstrap(a, a, iters=500)
    assert (r.mean_diff, r.low, r.high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    x = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    y = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert paired_bootstrap(x, y, iters=500, seed=3) == paired_bootstrap(x, y, iters=500, seed=3)
    noisy = paired_bootstrap(x, y, iters=2000, seed=3)
    assert noisy.low < 0.0 < noisy.high and noisy.p_value > 0.05


def test_paired_bootstrap_bad_input() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap([], [])


def test_mean_interval_matches_the_t_formula() -> None:
    from factflow.evals.stats import mean_interval

    # values 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.303 -> half width 4.303 / sqrt(3) = 2.4843
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert (low, high) == (pytest.approx(2 - 2.4843, abs=1e-3), pytest.approx(2 + 2.4843, abs=1e-3))
    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    one = mean_interval([0.7])
    assert one[0] == 0.7 and one[1] != one[1]  # nan: one run has no spread
    with pytest.raises(ValueError):
        mean_interval([])


def test_wilson_bounds_are_exact_at_zero_and_all() -> None:
    for n in range(1, 200):  # e.g. 0/48 gave a lower bound of 7e-18 from round-off
        assert wilson_interval(0, n)[0] == 0.0
        assert wilson_interval(n, n)[1] == 1.0
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert low <= k / n <= high
