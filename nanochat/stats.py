"""
How sure a score is: 95% intervals for the evaluations' numbers, and their one-line form.

    low, high = wilson_interval(7, 16)                           # an accuracy: 7 of 16 items
    low, high = bootstrap_centered_mean([(7, 16, 0.25), (30, 100, 0.0)])   # CORE / ChatCORE
    low, high = bootstrap_mean([5, 2, 1], [0.0, 0.5, 1.0])         # pass@1: 8 questions, 2 samples each
    fmt_estimate(7 / 16, (low, high), 16)                        # '43.8 [23.1, 66.8] n=16'

- An accuracy (k of n items right) gets the Wilson score interval (Wilson 1927, "Probable inference,
  the law of succession, and statistical inference", JASA 22): unlike the normal approximation it
  stays inside [0, 1] and is not empty at k = 0 or k = n, which matters at the small item caps of
  quick runs (16 items per task in runcpu.sh).
- A mean of centred accuracies over tasks (CORE, ChatCORE) gets a percentile bootstrap: each of
  `resamples` replicates redraws every task's items with replacement, the tasks held fixed (the
  score is defined on this set of tasks; its noise is which items were drawn). Redrawing n items of
  which k are right gives Binomial(n, k / n) right answers, so a task's counts are all the draw needs.
  Seeded: the same counts give the same interval on every run.
- A mean over independent units that each score one of a few values (chat_rl's pass@1: each
  question's fraction of correct samples, j / k) gets a percentile bootstrap over the units: a
  replicate redraws the questions with replacement, i.e. a Multinomial draw of the histogram.

What the intervals do NOT cover: the run-to-run noise of training (another seed gives another
model), and samples that are not independent draws (the k samples of one question are one unit:
pass@1 resamples questions, never samples).
Fractions in and out (0..1); fmt_estimate shows accuracies in percent.
"""

import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 0.975 quantile: two-sided 95%
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def wilson_interval(correct, total, z=Z95):
    """(low, high): the Wilson score interval of an accuracy of `correct` out of `total` items.
    No items tell nothing: (0.0, 1.0)."""
    assert 0 <= correct <= total, f"{correct} correct out of {total} items"
    if total == 0:
        return 0.0, 1.0
    p, z2 = correct / total, z * z
    center = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    low = 0.0 if correct == 0 else max(0.0, center - half)  # exact ends: rounding leaves 1e-17 there
    high = 1.0 if correct == total else min(1.0, center + half)
    return low, high


def bootstrap_centered_mean(tasks, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, level=0.95):
    """(low, high): the percentile bootstrap interval of the mean over tasks of the centred accuracy.
    tasks: [(correct, total, baseline)], one per task (total >= 1, baseline a fraction in [0, 1))."""
    assert tasks, "no tasks to average"
    correct, total, baseline = (np.array(column, dtype=np.float64) for column in zip(*tasks))
    assert (total >= 1).all() and (correct <= total).all(), f"bad counts {tasks}"
    rng = np.random.default_rng(seed)
    draws = rng.binomial(total.astype(np.int64), correct / total, size=(resamples, len(tasks)))  # (R, T)
    means = ((draws / total - baseline) / (1.0 - baseline)).mean(axis=1)  # centred accuracies (R, T) -> (R,)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_mean(histogram, values, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, level=0.95):
    """(low, high): the percentile bootstrap interval of the mean over units, where histogram[i]
    units score values[i] (at least one unit)."""
    histogram, values = np.asarray(histogram, dtype=np.int64), np.asarray(values, dtype=np.float64)
    assert histogram.shape == values.shape and (histogram >= 0).all() and histogram.sum() >= 1, \
        f"bad histogram {histogram.tolist()} of values {values.tolist()}"
    n = int(histogram.sum())
    rng = np.random.default_rng(seed)
    means = rng.multinomial(n, histogram / n, size=resamples) @ values / n  # (R,)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def interval_record(low, high, n, method):
    """The JSON form an evaluation records (results extra["intervals"][metric]) and report.md shows."""
    return {"low": low, "high": high, "n": int(n), "method": method, "level": 0.95}


def fmt_estimate(value, interval, n, percent=True):
    """'43.8 [23.1, 66.8] n=16' (percent=True: accuracies, one decimal) or '0.1234 [0.0812, 0.1650] n=500'."""
    low, high = interval
    if percent:
        return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}] n={n:,}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}] n={n:,}"
