"""
nanochat/stats.py against references: the Wilson interval against its closed forms at k = 0 and
k = n, against the roots of its defining quadratic for every k of small n, against the normal
approximation at large n, and by its exact coverage (a sum over the binomial pmf, no sampling); the
bootstrap against the exact binomial quantiles of one task, the 1/sqrt(T) narrowing over T equal
tasks, its centring and its seed; the bootstrap of a mean over units (pass@1) against the binomial
for 0/1 units and the central limit theorem for many-valued ones.

    uv run pytest tests/test_stats.py -q
"""

import math

import numpy as np
import pytest

from nanochat.stats import Z95, bootstrap_centered_mean, bootstrap_mean, fmt_estimate, interval_record, wilson_interval


def test_z95_is_the_normal_quantile():
    assert 0.5 * math.erfc(-Z95 / math.sqrt(2)) == pytest.approx(0.975, abs=1e-15)


@pytest.mark.parametrize("n", [1, 5, 16, 100, 2376])
def test_wilson_closed_forms_at_zero_and_all(n):
    z2 = Z95 ** 2
    assert wilson_interval(0, n) == (0.0, pytest.approx(z2 / (n + z2), rel=1e-12))
    assert wilson_interval(n, n) == (pytest.approx(n / (n + z2), rel=1e-12), 1.0)


@pytest.mark.parametrize("n", [3, 16, 40])
def test_wilson_bounds_are_the_roots_of_its_quadratic(n):
    """The interval is {p : (k/n - p)^2 <= z^2 p (1 - p) / n}: its ends solve
    (1 + z^2/n) p^2 - (2 k/n + z^2/n) p + (k/n)^2 = 0."""
    z2 = Z95 ** 2
    for k in range(1, n):
        phat = k / n
        roots = sorted(np.roots([1 + z2 / n, -(2 * phat + z2 / n), phat ** 2]).real)
        low, high = wilson_interval(k, n)
        assert (low, high) == (pytest.approx(roots[0], abs=1e-12), pytest.approx(roots[1], abs=1e-12))
        assert low < phat < high


def test_wilson_approaches_the_normal_approximation_at_large_n():
    for n in (10_000, 1_000_000):
        k = 3 * n // 10
        half = Z95 * math.sqrt(0.3 * 0.7 / n)
        low, high = wilson_interval(k, n)
        # the two differ at order 1/n (the centre moves by z^2 (1/2 - p) / n)
        assert low == pytest.approx(0.3 - half, abs=2 * Z95 ** 2 / n)
        assert high == pytest.approx(0.3 + half, abs=2 * Z95 ** 2 / n)


@pytest.mark.parametrize("n, p", [(16, 0.25), (16, 0.5), (100, 0.1), (500, 0.3)])
def test_wilson_covers_about_95_percent(n, p):
    """Exact coverage: the probability, under Binomial(n, p), of an interval that holds p."""
    coverage = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k)
                   for k in range(n + 1) if wilson_interval(k, n)[0] <= p <= wilson_interval(k, n)[1])
    assert 0.92 <= coverage <= 0.98, coverage


def test_wilson_with_no_items_knows_nothing():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(AssertionError):
        wilson_interval(5, 4)


def binomial_quantile(n, p, q):
    """The smallest k with P(X <= k) >= q, X ~ Binomial(n, p)."""
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if cdf >= q:
            return k
    return n


def test_bootstrap_of_one_task_follows_the_binomial():
    """One task, baseline 0: the resampled accuracies are Binomial(n, k/n) / n, so the percentile
    interval is near that distribution's 2.5% and 97.5% quantiles (1000 resamples: within a few items)."""
    n, k = 200, 60
    low, high = bootstrap_centered_mean([(k, n, 0.0)], resamples=1000, seed=0)
    assert low == pytest.approx(binomial_quantile(n, k / n, 0.025) / n, abs=3 / n)
    assert high == pytest.approx(binomial_quantile(n, k / n, 0.975) / n, abs=3 / n)
    # and near Wilson's at this size
    wl, wh = wilson_interval(k, n)
    assert (low, high) == (pytest.approx(wl, abs=0.02), pytest.approx(wh, abs=0.02))


def test_bootstrap_narrows_as_one_over_sqrt_tasks_and_centres():
    one = bootstrap_centered_mean([(30, 100, 0.0)], seed=1)
    four = bootstrap_centered_mean([(30, 100, 0.0)] * 4, seed=1)
    assert 0.4 < (four[1] - four[0]) / (one[1] - one[0]) < 0.6  # 1/sqrt(4) = 0.5
    assert four[0] < 0.3 < four[1]
    # centring is linear and the draws depend on the seed only: the same draws, rescaled
    raw = bootstrap_centered_mean([(40, 100, 0.0)], seed=3)
    centred = bootstrap_centered_mean([(40, 100, 0.25)], seed=3)
    assert centred == (pytest.approx((raw[0] - 0.25) / 0.75), pytest.approx((raw[1] - 0.25) / 0.75))
    assert bootstrap_centered_mean([(16, 16, 0.25)]) == (1.0, 1.0)  # a perfect task has no spread


def test_bootstrap_is_seeded():
    tasks = [(7, 16, 0.25), (3, 16, 0.0), (9, 16, 0.2)]
    assert bootstrap_centered_mean(tasks) == bootstrap_centered_mean(tasks)
    assert bootstrap_centered_mean(tasks, seed=1) != bootstrap_centered_mean(tasks, seed=2)


def test_formats():
    assert fmt_estimate(7 / 16, wilson_interval(7, 16), 16) == "43.8 [23.1, 66.8] n=16"
    assert fmt_estimate(0.1234, (0.0812, 0.165), 1500, percent=False) == "0.1234 [0.0812, 0.1650] n=1,500"
    assert interval_record(0.1, 0.2, 16, "wilson") == {"low": 0.1, "high": 0.2, "n": 16, "method": "wilson",
                                                       "level": 0.95}


def test_bootstrap_mean_of_zero_one_units_follows_the_binomial():
    """Units scoring 0 or 1: a mean's replicates are Binomial(n, k/n) / n, as for one task."""
    n, k = 200, 60
    low, high = bootstrap_mean([n - k, k], [0.0, 1.0])
    assert low == pytest.approx(binomial_quantile(n, k / n, 0.025) / n, abs=3 / n)
    assert high == pytest.approx(binomial_quantile(n, k / n, 0.975) / n, abs=3 / n)


def test_bootstrap_mean_follows_the_central_limit_theorem():
    """pass@1 of 400 questions with 4 samples each: the interval is about mean +- 1.96 sd / sqrt(n)
    (the units' own sd), within the percentile bootstrap's sampling error at 1000 resamples."""
    histogram, values = np.array([150, 60, 50, 60, 80]), np.arange(5) / 4
    n = histogram.sum()
    mean = histogram @ values / n
    se = math.sqrt(histogram @ (values - mean) ** 2 / n / n)
    low, high = bootstrap_mean(histogram, values)
    assert low == pytest.approx(mean - Z95 * se, abs=0.2 * se) and high == pytest.approx(mean + Z95 * se, abs=0.2 * se)
    assert bootstrap_mean(histogram, values) == (low, high)  # seeded
    assert bootstrap_mean([0, 7, 0], [0.0, 0.5, 1.0]) == (0.5, 0.5)  # every unit alike: no spread
