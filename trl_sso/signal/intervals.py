"""95% intervals for the signal figures, so that a reader can tell a real difference from the noise of a few records.

- a share (accuracy, a follow rate, a win rate): the Wilson score interval, which stays inside [0, 1] and is sensible
  for 0 or n successes, where the normal approximation collapses to a point;
- the difference of two shares from independent samples (two rounds' data): Newcombe's hybrid score interval, built
  from the two Wilson intervals;
- a mean or a mean difference (the on-policyness gap, lengths, paired scores of two models on the same prompts): the
  percentile bootstrap, seeded so that a report is the same when computed again.

A difference is *significant* here when its interval excludes 0. Figures carry their interval as `[low, high]` under
the figure's name with `_ci95` appended.
"""

import math
import random
from collections.abc import Sequence


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_RESAMPLES = 2000


def wilson(successes: float, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a share `successes / n` (`None` for `n == 0`).

    Example:
    ```python
    >>> [round(x, 3) for x in wilson(0, 10)]
    [0.0, 0.278]
    >>> [round(x, 3) for x in wilson(5, 10)]
    [0.237, 0.763]

    ```
    """
    if n <= 0:
        return None
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact at the ends: no successes give a lower bound of 0, all successes an upper bound of 1 (no rounding dust)
    return [0.0 if successes <= 0 else max(0.0, center - half), 1.0 if successes >= n else min(1.0, center + half)]


def share_difference(k1: float, n1: int, k2: float, n2: int) -> list[float] | None:
    """Newcombe's hybrid score interval of `k1 / n1 - k2 / n2` for two independent samples (`None` if one is empty).

    Example (Newcombe, Statistics in Medicine 1998, method 10: 56/70 against 48/80 gives 0.0524 to 0.3339):
    ```python
    >>> [round(x, 4) for x in share_difference(56, 70, 48, 80)]
    [0.0524, 0.3339]

    ```
    """
    first, second = wilson(k1, n1), wilson(k2, n2)
    if first is None or second is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return [
        d - math.sqrt((p1 - first[0]) ** 2 + (second[1] - p2) ** 2),
        d + math.sqrt((first[1] - p1) ** 2 + (p2 - second[0]) ** 2),
    ]


def bootstrap_mean(values: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> list[float] | None:
    """The percentile-bootstrap interval of the mean of `values` (`None` if empty; a point for a single value).

    For paired samples (two models on the same prompts), pass the per-item differences.
    """
    values = [float(v) for v in values]
    if not values:
        return None
    n = len(values)
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return [means[int(0.025 * (resamples - 1))], means[int(math.ceil(0.975 * (resamples - 1)))]]


def paired_change(after: Sequence[float], before: Sequence[float]) -> tuple[float, list[float], bool]:
    """The mean change from `before` to `after` over the same items (prompts), its bootstrap interval, and whether
    the change is significant (the interval excludes 0)."""
    differences = [a - b for a, b in zip(after, before, strict=True)]
    interval = bootstrap_mean(differences)
    return sum(differences) / len(differences), interval, excludes_zero(interval)


def excludes_zero(interval: Sequence[float] | None) -> bool:
    """Whether an interval of a difference lies wholly on one side of 0: the difference is significant."""
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


def with_interval(value: float | None, interval: Sequence[float] | None, digits: int = 2) -> str:
    """A figure and its interval for tables: `0.50 [0.24, 0.76]`, or `n/a`.

    Example:
    ```python
    >>> with_interval(0.5, [0.2366, 0.7634])
    '0.50 [0.24, 0.76]'

    ```
    """
    if value is None:
        return "n/a"
    if interval is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
