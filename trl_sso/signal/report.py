"""The signal report of an SSO dataset, from the records alone (no model): accuracy on verifiable features, length
drift and degeneracy. Computed by `trl-sso generate` into `summary.json` (`signal`) and by `trl-sso inspect`.

Every share carries its 95% Wilson interval (`<name>_ci95`) and every mean its bootstrap interval
(`trl_sso.signal.intervals`).

- **Accuracy**: for each record and each of its features that has a checker, y+ and y- are scored on the good side
  (`trl_sso.checkers`): y+ scoring higher is *correct*, equal a *tie*, lower *wrong*. Shares per feature and
  overall, and how often each response keeps to its own side: y+ follows the good side, y- does not (the bad side is
  scored as "does not follow the good side"), y_o (no principle) follows it, the policy's base rate.
- **Length drift**: mean tokens of y+, y-, y_o (the generator's counts; words where there are none), the ratio
  y+ / y_o, and the share of responses cut at `max_completion_length` where the generator recorded it.
- **Degeneracy**: pairs whose y+ and y- are identical or nearly so (word-trigram Jaccard similarity >= 0.9), and
  distinct-1 / distinct-2 of each side (distinct n-grams over all n-grams).
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ..data import CHOSEN, ORIGINAL, REJECTED, RESPONSE_COLUMNS
from .intervals import all_equal_note, bootstrap_mean, score_mean, with_interval
from .judge import format_judge
from .responses import normalize, outcome, outcome_shares, response_text


NEAR_DUPLICATE = 0.9  # word-trigram Jaccard similarity from which y+ and y- count as near-identical
SIDE = {CHOSEN: "y+", REJECTED: "y-", ORIGINAL: "y_o"}


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _similarity(a: str, b: str) -> float:
    """Jaccard similarity of the word trigrams (words for texts under three words) of two responses."""
    wa, wb = a.lower().split(), b.lower().split()
    n = 3 if min(len(wa), len(wb)) >= 3 else 1
    sa, sb = set(_ngrams(wa, n)), set(_ngrams(wb, n))
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _distinct(texts: Iterable[str], n: int) -> float:
    grams = [gram for text in texts for gram in _ngrams(text.lower().split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def accuracy(records: list[Mapping], features: Mapping[str, Any]) -> dict:
    """Correct / tie / wrong shares of the (record, verifiable feature) pairs, per feature and overall, and how often
    y+, y-, y_o follow the good side. Features without a checker, or unknown to `features`, are skipped."""
    outcomes: dict[str, Counter] = {}
    follows: dict[str, dict[str, list[float]]] = {}
    for record in records:
        texts = {column: response_text(record[column]) for column in RESPONSE_COLUMNS if column in record}
        for name in record.get("features") or []:
            checker = getattr(features.get(name), "checker", None)
            if checker is None:
                continue
            scores = {column: checker(text) for column, text in texts.items()}
            outcomes.setdefault(name, Counter())[outcome(scores[CHOSEN], scores[REJECTED])] += 1
            for column, score in scores.items():
                follows.setdefault(name, {}).setdefault(column, []).append(score)

    def shares(counter: Counter, side_scores: dict[str, list[float]]) -> dict:
        row = outcome_shares(counter)
        rejected = side_scores.get(REJECTED, [])
        for key, scores in (
            ("chosen_follows_good", side_scores.get(CHOSEN, [])),
            ("rejected_breaks_good", [1.0 - s for s in rejected]),
            ("original_follows_good", side_scores.get(ORIGINAL, [])),
        ):
            row[key], row[f"{key}_ci95"] = score_mean(scores)
        return row

    per_feature = {name: shares(outcomes[name], follows[name]) for name in sorted(outcomes)}
    overall_counter, overall_scores = Counter(), {}
    for name in outcomes:
        overall_counter.update(outcomes[name])
        for column, values in follows[name].items():
            overall_scores.setdefault(column, []).extend(values)
    overall = shares(overall_counter, overall_scores) if overall_counter else None
    return {"overall": overall, "per_feature": per_feature}


def lengths(records: list[Mapping]) -> dict:
    """Mean tokens of y+, y-, y_o (with bootstrap intervals; where every response has the same length, no interval
    and a note), the ratio y+ / y_o, and the truncation rate where it was recorded (with its Wilson interval)."""
    means, intervals, notes, unit = {}, {}, {}, "tokens"
    for column in RESPONSE_COLUMNS:
        counts = [record.get(f"{column}_tokens") for record in records]
        if any(count is None for count in counts):
            unit = "words"
            counts = [len(response_text(record.get(column)).split()) for record in records]
        means[column], intervals[column] = _mean(counts), bootstrap_mean(counts)
        if all_equal_note(counts):
            notes[column] = all_equal_note(counts)
    finished = [record[f"{c}_finished"] for record in records for c in RESPONSE_COLUMNS if f"{c}_finished" in record]
    ratio = means[CHOSEN] / means[ORIGINAL] if means.get(ORIGINAL) else None
    truncated, truncated_ci95 = score_mean([1.0 - float(f) for f in finished])
    result = {
        "unit": unit,
        "mean": means,
        "mean_ci95": intervals,
        "chosen_to_original": ratio,
        "truncated": truncated,
        "truncated_ci95": truncated_ci95,
    }
    if notes:
        result["mean_notes"] = notes
    return result


def degeneracy(records: list[Mapping]) -> dict:
    """Shares of identical and near-identical (y+, y-) pairs, and distinct-1 / distinct-2 of each side."""
    chosen = [response_text(record[CHOSEN]) for record in records]
    rejected = [response_text(record[REJECTED]) for record in records]
    identical = [normalize(a) == normalize(b) for a, b in zip(chosen, rejected)]
    near = [same or _similarity(a, b) >= NEAR_DUPLICATE for same, a, b in zip(identical, chosen, rejected)]
    texts = {column: [response_text(record.get(column)) for record in records] for column in RESPONSE_COLUMNS}
    return {
        "identical_pairs": _mean([float(x) for x in identical]),
        "near_identical_pairs": _mean([float(x) for x in near]),
        "distinct_1": {column: _distinct(values, 1) for column, values in texts.items()},
        "distinct_2": {column: _distinct(values, 2) for column, values in texts.items()},
    }


def signal_report(records: Iterable[Mapping], features: Mapping[str, Any]) -> dict:
    """Accuracy, length drift and degeneracy of `records` (canonical SSO records with a `features` column for
    accuracy); `features` maps feature names to `trl_sso.principles.Feature`."""
    records = list(records)
    if not records:
        raise ValueError(
            "The dataset holds no record, so there is no signal to measure. Generate or pick another one."
        )
    return {
        "records": len(records),
        "accuracy": accuracy(records, features),
        "length": lengths(records),
        "degeneracy": degeneracy(records),
    }


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(report: dict, title: str = "Signal report") -> str:
    """A one-screen text table of a signal report (`signal_report`, with `onpolicy` and `reward` when present)."""
    lines = [f"{title} ({report['records']} records)"]
    overall = report["accuracy"]["overall"]
    if overall:
        lines.append(
            f"accuracy on verifiable features ({overall['pairs']} pairs): correct "
            f"{with_interval(overall['correct'], overall['correct_ci95'])}, tie {_pct(overall['tie'])}, "
            f"wrong {_pct(overall['wrong'])} (95% intervals in brackets)"
        )
        lines.append(
            f"  {'feature':12} {'pairs':>5} {'correct [95% interval]':>22} {'tie':>7} {'wrong':>7} {'y+ good':>8} "
            f"{'y- not':>7} {'y_o good':>8}"
        )
        for name, row in report["accuracy"]["per_feature"].items():
            lines.append(
                f"  {name:12} {row['pairs']:5d} {with_interval(row['correct'], row['correct_ci95']):>22} "
                f"{_pct(row['tie']):>7} "
                f"{_pct(row['wrong']):>7} {_pct(row['chosen_follows_good']):>8} "
                f"{_pct(row['rejected_breaks_good']):>7} {_pct(row['original_follows_good']):>8}"
            )
    else:
        lines.append("accuracy: no record carries a verifiable feature (generate with `--features verifiable`)")
    onpolicy = report.get("onpolicy")
    if onpolicy and "mean_logp" in onpolicy:
        a, gap = onpolicy["mean_logp"], onpolicy["gap_to_original"]
        ci = onpolicy.get("gap_to_original_ci95") or {}
        lines.append(
            f"on-policyness under {onpolicy['model']}: A(x, y+) {_num(a[CHOSEN])}, A(x, y-) {_num(a[REJECTED])}, "
            f"A(x, y_o) {_num(a[ORIGINAL])}; gap to y_o: y+ {with_interval(gap[CHOSEN], ci.get(CHOSEN))}, "
            f"y- {with_interval(gap[REJECTED], ci.get(REJECTED))}"
        )
    elif onpolicy:
        lines.append(f"on-policyness: not measured ({onpolicy['skipped']})")
    length = report["length"]
    mean = length["mean"]
    lines.append(
        f"length ({length['unit']}): y+ {_num(mean[CHOSEN], 1)}, y- {_num(mean[REJECTED], 1)}, "
        f"y_o {_num(mean[ORIGINAL], 1)}; y+ / y_o {_num(length['chosen_to_original'])}; "
        f"truncated {_pct(length['truncated'])}"
    )
    degenerate = report["degeneracy"]
    lines.append(
        f"degeneracy: identical pairs {_pct(degenerate['identical_pairs'])}, near-identical "
        f"{_pct(degenerate['near_identical_pairs'])}; distinct-2 y+ {_num(degenerate['distinct_2'][CHOSEN])}, "
        f"y- {_num(degenerate['distinct_2'][REJECTED])}, y_o {_num(degenerate['distinct_2'][ORIGINAL])}"
    )
    if report.get("reward"):
        reward = report["reward"]
        lines.append(
            f"reward model {reward['model']}: r(y+) > r(y-) in "
            f"{with_interval(reward['chosen_wins'], reward.get('chosen_wins_ci95'))}"
        )
    if report.get("judge"):
        lines.append(format_judge(report["judge"]))
    return "\n".join(lines)
