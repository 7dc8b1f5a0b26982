"""95% intervals for the signal figures, so that a reader can tell a real difference from the noise of a few records.

No interval here has zero width unless its quantity is known exactly: every method stays honest at the boundary (0
of n, n of n, all differences 0).

- a share, or a mean of per-prompt scores in [0, 1] (accuracy, a follow rate): the Wilson score interval on the summed
  scores (`score_mean`). It is exact for 0/1 scores and conservative for fractional ones, whose variance at mean p is
  at most p(1 - p); it stays inside [0, 1] and keeps its width at 0 or n successes;
- the difference of two shares from independent samples (two rounds' data): Newcombe's hybrid score interval, built
  from the two Wilson intervals (`share_difference`);
- the change of scores in [0, 1] on the same items (two policies on the same prompts): Newcombe's square-and-add
  interval for paired proportions (method 10 of Newcombe 1998) and, for 0/1 scores, the exact McNemar test for
  significance (`paired_score_change`);
- a mean or a mean difference of unbounded values (the on-policyness gap, token counts): the percentile bootstrap,
  seeded so that a report is the same when computed again (`bootstrap_mean`, `bootstrap_difference`). Where every
  value is equal the bootstrap can say nothing about the spread: it returns no interval rather than a point, and the
  report says why (`all_equal_note`).

A difference is *significant* when its test rejects "no difference" at the 5% level. "No difference" is claimed only
as *equivalence* within a stated margin: two one-sided tests, that is a 90% interval inside (-margin, margin)
(`equivalent`). Figures carry their interval as `[low, high]` under the figure's name with `_ci95` appended.
"""

import math
import random
from collections.abc import Sequence
from statistics import NormalDist


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
Z90 = 1.6448536269514722  # its 95% quantile: the 90% interval of two one-sided tests at 5%
BOOTSTRAP_RESAMPLES = 2000


def wilson(successes: float, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a share `successes / n` (`None` for `n == 0`).

    Example (Newcombe 1998, single proportion, method 3: 81/263 gives 0.2553 to 0.3662; 0/20 gives 0 to 0.1611):
    ```python
    >>> [round(x, 4) for x in wilson(81, 263)]
    [0.2553, 0.3662]
    >>> [round(x, 4) for x in wilson(0, 20)]
    [0.0, 0.1611]

    ```
    """
    if n <= 0:
        return None
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    # exact at the ends: no successes give a lower bound of 0, all successes an upper bound of 1 (no rounding dust)
    return [0.0 if successes <= 0 else max(0.0, center - half), 1.0 if successes >= n else min(1.0, center + half)]


def score_mean(scores: Sequence[float], z: float = Z95) -> tuple[float | None, list[float] | None]:
    """The mean of per-item scores in [0, 1] and its Wilson interval on their sum (see the module docstring);
    `(None, None)` for no scores.

    Example (every score 0: the mean is 0, but 16 items leave room up to 0.194):
    ```python
    >>> mean, interval = score_mean([0.0] * 16)
    >>> mean, [round(x, 3) for x in interval]
    (0.0, [0.0, 0.194])

    ```
    """
    scores = _unit_scores(scores)
    if not scores:
        return None, None
    return sum(scores) / len(scores), wilson(sum(scores), len(scores), z)


def share_difference(k1: float, n1: int, k2: float, n2: int, z: float = Z95) -> list[float] | None:
    """Newcombe's hybrid score interval of `k1 / n1 - k2 / n2` for two independent samples (`None` if one is empty).

    Example (Newcombe, Statistics in Medicine 1998, method 10: 56/70 against 48/80 gives 0.0524 to 0.3339):
    ```python
    >>> [round(x, 4) for x in share_difference(56, 70, 48, 80)]
    [0.0524, 0.3339]

    ```
    """
    first, second = wilson(k1, n1, z), wilson(k2, n2, z)
    if first is None or second is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return [
        d - math.sqrt((p1 - first[0]) ** 2 + (second[1] - p2) ** 2),
        d + math.sqrt((first[1] - p1) ** 2 + (p2 - second[0]) ** 2),
    ]


def paired_table(after: Sequence[float], before: Sequence[float]) -> tuple[float, float, float, float]:
    """The paired 2x2 table `(both, after_only, before_only, neither)` of scores in [0, 1] on the same items. A 0/1
    item adds 1 to one cell; a fractional one is split with the most overlap its two scores allow (`min` in `both`)."""
    after, before = _unit_scores(after), _unit_scores(before)
    if len(after) != len(before):
        raise ValueError(f"A paired change needs as many scores after ({len(after)}) as before ({len(before)}).")
    both = sum(min(a, b) for a, b in zip(after, before))
    after_only = sum(max(a - b, 0.0) for a, b in zip(after, before))
    before_only = sum(max(b - a, 0.0) for a, b in zip(after, before))
    return both, after_only, before_only, len(after) - both - after_only - before_only


def paired_difference(table: Sequence[float], z: float = Z95) -> list[float] | None:
    """Newcombe's square-and-add interval (Newcombe 1998, paired data, method 10) for `p_after - p_before` from a
    paired table `(both, after_only, before_only, neither)`: the Wilson intervals of the two shares, combined with
    their estimated correlation (continuity-corrected, as in the paper). `None` for an empty table.

    Example (Fagerland, Lydersen and Laake 2017, the Cavo et al. 2012 table, 59 both, 6 and 16 discordant, 80
    neither: -0.0621, 95% interval -0.1186 to -0.0046):
    ```python
    >>> [round(x, 4) for x in paired_difference((59, 6, 16, 80))]
    [-0.1186, -0.0046]

    ```
    """
    both, after_only, before_only, neither = table
    n = both + after_only + before_only + neither
    if n <= 0:
        return None
    k1, k2 = both + after_only, both + before_only
    p1, p2 = k1 / n, k2 / n
    l1, u1 = wilson(k1, n, z)
    l2, u2 = wilson(k2, n, z)
    margins = k1 * (n - k1) * k2 * (n - k2)
    phi = 0.0
    if margins > 0:
        cross = both * neither - after_only * before_only
        phi = (cross - n / 2) / math.sqrt(margins) if cross > n / 2 else min(cross, 0.0) / math.sqrt(margins)
    d = p1 - p2
    below = (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
    above = (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)
    return [max(-1.0, d - math.sqrt(max(below, 0.0))), min(1.0, d + math.sqrt(max(above, 0.0)))]


def mcnemar_exact(after_only: int, before_only: int) -> float:
    """The exact (conditional) McNemar test's two-sided p-value: under "no change", the discordant items split as a
    fair coin's tosses.

    Example (Fagerland, Lydersen and Laake 2013: the Bentur et al. 2009 table with 1 and 7 discordant pairs gives
    0.070; Cavo et al. 2012, 6 and 16, gives 0.052):
    ```python
    >>> round(mcnemar_exact(1, 7), 3), round(mcnemar_exact(6, 16), 3)
    (0.07, 0.052)

    ```
    """
    discordant = after_only + before_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(after_only, before_only) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def paired_score_change(after: Sequence[float], before: Sequence[float]) -> dict:
    """The change of the mean score in [0, 1] from `before` to `after` on the same items (prompts): `change`, its
    Newcombe interval `ci95`, the paired table's discordant counts, `p_value` and `significant`. For 0/1 scores the
    p-value is the exact McNemar test's; for fractional scores (a mean of several checks per prompt) it is the
    asymptotic score test's on the fractional discordant counts, and "significant" also requires the interval to
    exclude 0.

    Example (16 prompts, none following before or after: no change, yet an interval that leaves room either side):
    ```python
    >>> result = paired_score_change([0] * 16, [0] * 16)
    >>> result["change"], [round(x, 3) for x in result["ci95"]], result["p_value"], result["significant"]
    (0.0, [-0.194, 0.194], 1.0, False)

    ```
    """
    table = paired_table(after, before)
    _, gained, lost, _ = table
    n = len(after)
    binary = all(float(x).is_integer() for x in (*after, *before))
    if binary:
        p_value = mcnemar_exact(round(gained), round(lost))
    else:
        statistic = (gained - lost) / math.sqrt(gained + lost) if gained + lost > 0 else 0.0
        p_value = 2 * (1 - NormalDist().cdf(abs(statistic)))
    interval = paired_difference(table)
    return {
        "change": (gained - lost) / n if n else None,
        "ci95": interval,
        "pairs": n,
        "gained": gained,
        "lost": lost,
        "test": "exact McNemar" if binary else "score test",
        "p_value": p_value,
        "significant": p_value < 0.05 and (binary or excludes_zero(interval)),
    }


def bootstrap_mean(values: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, z: float = Z95):
    """The percentile-bootstrap interval of the mean of `values` (`None` if empty or if every value is equal: then
    the sample says nothing about the spread; `all_equal_note` says so in a report).

    For paired samples (two models on the same prompts), pass the per-item differences (or use `paired_mean_change`).
    """
    values = [float(v) for v in values]
    if len(set(values)) < 2:
        return None
    n, tail = len(values), NormalDist().cdf(-z)
    rng = random.Random(seed)
    return _percentiles(sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)), tail)


def bootstrap_difference(first: Sequence[float], second: Sequence[float], seed: int = 0, z: float = Z95):
    """The percentile-bootstrap interval of `mean(first) - mean(second)` for independent samples (each resampled on
    its own); `None` where either is empty or neither varies."""
    first, second = [float(v) for v in first], [float(v) for v in second]
    if not first or not second or (len(set(first)) < 2 and len(set(second)) < 2):
        return None
    rng, tail = random.Random(seed), NormalDist().cdf(-z)

    def resampled(values):
        return sum(values[rng.randrange(len(values))] for _ in values) / len(values)

    diffs = sorted(resampled(first) - resampled(second) for _ in range(BOOTSTRAP_RESAMPLES))
    return [
        diffs[int(tail * (BOOTSTRAP_RESAMPLES - 1))],
        diffs[int(math.ceil((1 - tail) * (BOOTSTRAP_RESAMPLES - 1)))],
    ]


def paired_mean_change(after: Sequence[float], before: Sequence[float]) -> dict:
    """The mean change of unbounded values on the same items: `change`, the bootstrap interval of the per-item
    differences `ci95` (`None` with a `note` where every difference is equal), `pairs` and `significant`."""
    differences = [a - b for a, b in zip(after, before, strict=True)]
    interval = bootstrap_mean(differences)
    result = {
        "change": sum(differences) / len(differences) if differences else None,
        "ci95": interval,
        "pairs": len(differences),
        "significant": excludes_zero(interval),
    }
    note = all_equal_note(differences)
    if note:
        result["note"] = note
    return result


def all_equal_note(values: Sequence[float]) -> str | None:
    """Why a bootstrap gave no interval: every one of the values is equal (`None` when they vary or are absent)."""
    values = list(values)
    if values and len(set(values)) == 1:
        return f"all {len(values)} values equal {float(values[0]):g}: the sample shows no spread to bootstrap"
    return None


def excludes_zero(interval: Sequence[float] | None) -> bool:
    """Whether an interval of a difference lies wholly on one side of 0."""
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


def equivalent(interval90: Sequence[float] | None, margin: float) -> bool:
    """Two one-sided tests at 5%: whether the 90% interval of a difference lies inside `(-margin, margin)`, so that
    "no difference larger than the margin" is a finding and not the mere absence of one."""
    return interval90 is not None and -margin < interval90[0] and interval90[1] < margin


def mcnemar_sample_size(discordant: float, difference: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Items (prompts) a paired comparison of 0/1 outcomes needs to detect `difference` with the given power by
    McNemar's test, when a share `discordant` of the items changes outcome (Connor 1987).

    Example (20% discordant, a difference of 0.10, 5% two-sided, 80% power: (1.960 * 0.447 + 0.842 * 0.436)^2 /
    0.01 = 154.6, so 155):
    ```python
    >>> mcnemar_sample_size(0.2, 0.1)
    155

    ```
    """
    if not 0 < abs(difference) <= discordant <= 1:
        raise ValueError(f"The discordant share ({discordant}) must be at least the difference ({difference}).")
    z_alpha, z_beta = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    root = z_alpha * math.sqrt(discordant) + z_beta * math.sqrt(discordant - difference**2)
    return math.ceil(root**2 / difference**2)


def two_sample_size(sd: float, difference: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Items per group a comparison of two independent means needs to detect `difference` (normal approximation).

    Example (sd 0.5, difference 0.25: 2 * (1.96 + 0.84)^2 * 4 = 62.8, so 63):
    ```python
    >>> two_sample_size(0.5, 0.25)
    63

    ```
    """
    z_alpha, z_beta = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    return math.ceil(2 * ((z_alpha + z_beta) * sd / difference) ** 2)


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


def _percentiles(ordered: list[float], tail: float) -> list[float]:
    """The `tail` and `1 - tail` percentiles of sorted bootstrap replicates: the percentile interval."""
    last = len(ordered) - 1
    return [ordered[int(tail * last)], ordered[int(math.ceil((1 - tail) * last))]]


def _unit_scores(scores: Sequence[float]) -> list[float]:
    """The scores as floats, each checked to lie in [0, 1]: the intervals for shares hold only there."""
    scores = [float(s) for s in scores]
    outside = [s for s in scores if not 0.0 <= s <= 1.0]
    if outside:
        raise ValueError(f"Scores must lie in [0, 1] for a share's interval; got {outside[:3]}.")
    return scores
