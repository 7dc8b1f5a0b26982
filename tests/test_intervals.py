"""The 95% intervals of the signal figures, against published values and cases worked by hand."""

import os

import pytest

from trl_sso.scripts.evaluate import compare_with_first
from trl_sso.scripts.iterate import format_rounds, rounds_summary
from trl_sso.signal.intervals import (
    all_equal_note,
    bootstrap_difference,
    bootstrap_mean,
    equivalent,
    excludes_zero,
    mcnemar_exact,
    mcnemar_sample_size,
    paired_difference,
    paired_mean_change,
    paired_score_change,
    paired_table,
    score_mean,
    share_difference,
    two_sample_size,
    wilson,
)


def test_wilson_known_values():
    # 0 of 10: [0, z^2 / (n + z^2)]; 10 of 10 mirrors it; 5 of 10 is symmetric around one half
    assert wilson(0, 10) == pytest.approx([0.0, 1.959963984540054**2 / (10 + 1.959963984540054**2)], abs=1e-12)
    assert wilson(10, 10) == pytest.approx([1 - 0.27753, 1.0], abs=1e-5)
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.23659, abs=1e-5) and low + high == pytest.approx(1.0)
    # Newcombe (1998), single proportion, method 3: his four examples
    assert wilson(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)
    assert wilson(15, 148) == pytest.approx([0.0624, 0.1605], abs=1e-4)
    assert wilson(0, 20) == pytest.approx([0.0, 0.1611], abs=1e-4)
    assert wilson(1, 29) == pytest.approx([0.0061, 0.1718], abs=1e-4)
    assert wilson(0, 0) is None


def test_newcombe_difference_known_values():
    assert share_difference(56, 70, 48, 80) == pytest.approx([0.0524, 0.3339], abs=1e-4)  # Newcombe (1998), method 10
    assert share_difference(9, 10, 3, 10) == pytest.approx([0.1705, 0.8090], abs=1e-4)
    assert share_difference(1, 0, 1, 1) is None


def test_paired_difference_and_mcnemar_known_values():
    # Fagerland, Lydersen & Laake (2017), the paired 2x2 table of Cavo et al. (2012): 59, 6, 16, 80
    assert paired_difference((59, 6, 16, 80)) == pytest.approx([-0.1186, -0.0046], abs=1e-4)
    # Fagerland, Lydersen & Laake (2013): exact conditional McNemar, Bentur et al. (2009) 1 vs 7, Cavo 6 vs 16
    assert mcnemar_exact(1, 7) == pytest.approx(0.0703, abs=1e-4)
    assert mcnemar_exact(6, 16) == pytest.approx(0.0525, abs=1e-4)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    # the table from scores: 0/1 items fall into one cell each
    assert paired_table([1, 1, 0, 0], [1, 0, 1, 0]) == (1, 1, 1, 1)


def test_paired_score_change_is_honest_at_the_boundary():
    none_moved = paired_score_change([0] * 16, [0] * 16)
    low, high = none_moved["ci95"]
    assert none_moved["change"] == 0.0 and low < 0 < high and high == pytest.approx(0.194, abs=1e-3)
    assert none_moved["p_value"] == 1.0 and not none_moved["significant"]
    all_moved = paired_score_change([1] * 16, [0] * 16)
    assert all_moved["change"] == 1.0 and all_moved["ci95"][1] == 1.0 and all_moved["ci95"][0] < 1.0
    assert all_moved["p_value"] == pytest.approx(2 / 2**16) and all_moved["significant"]
    # 8 of 16 gained, none lost: exact p = 2 / 2^8
    half = paired_score_change([1] * 8 + [0] * 8, [0] * 16)
    assert half["p_value"] == pytest.approx(2 / 2**8) and half["significant"] and half["test"] == "exact McNemar"
    # fractional scores (a mean over two checks): the score test, and the interval must agree
    fractional = paired_score_change([0.5, 0.5, 1.0, 0.5], [0.0, 0.5, 0.5, 0.0])
    assert fractional["change"] == pytest.approx(0.375) and fractional["test"] == "score test"
    assert not fractional["significant"]  # 4 prompts cannot show it
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        paired_score_change([2.0], [0.0])


def test_score_mean_and_bootstrap_never_claim_certainty():
    for scores in ([0.0] * 8, [1.0] * 8, [0.5] * 8):
        mean, (low, high) = score_mean(scores)
        assert low < high and low <= mean <= high
    assert score_mean([]) == (None, None)
    values = [0.0, 1.0] * 10
    interval = bootstrap_mean(values)
    assert interval == bootstrap_mean(values)  # the same report when computed again
    assert interval[0] < 0.5 < interval[1]
    assert interval[1] - interval[0] == pytest.approx(2 * 1.96 * 0.5 / 20**0.5, abs=0.08)  # about the normal width
    assert bootstrap_mean([3.0, 3.0, 3.0]) is None and "all 3 values equal 3" in all_equal_note([3.0, 3.0, 3.0])
    assert bootstrap_mean([]) is None and all_equal_note([]) is None and all_equal_note([1, 2]) is None
    change = paired_mean_change([5.0, 6.0, 7.0], [5.0, 6.0, 7.0])
    assert change["ci95"] is None and "all 3 values equal 0" in change["note"] and not change["significant"]
    difference = bootstrap_difference([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
    assert difference[0] > 0 and difference[1] <= 3.0
    assert bootstrap_difference([2.0, 2.0], [1.0, 1.0]) is None


def test_significance_equivalence_and_sample_sizes():
    assert excludes_zero([0.1, 0.3]) and excludes_zero([-0.3, -0.1])
    assert not excludes_zero([-0.1, 0.3]) and not excludes_zero(None)
    assert equivalent([-0.04, 0.05], 0.1) and not equivalent([-0.04, 0.12], 0.1) and not equivalent(None, 0.1)
    # Connor (1987) by hand: (1.95996 * sqrt(0.2) + 0.84162 * sqrt(0.19))^2 / 0.01 = 154.6
    assert mcnemar_sample_size(0.2, 0.1) == 155
    assert two_sample_size(0.5, 0.25) == 63  # 2 * (1.95996 + 0.84162)^2 * 4 = 62.8
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_sample_size(0.05, 0.1)


def _evaluation(per_prompt):
    mean = sum(per_prompt) / len(per_prompt)
    return {
        "follows_good_mean": mean,
        "follows_good_mean_ci95": score_mean(per_prompt)[1],
        "follows_good_per_prompt": per_prompt,
    }


def _report(t, correct, pairs, per_prompt):
    return {
        "round": t,
        "mean_tokens": {"chosen": 10.0, "rejected": 20.0, "original": 15.0},
        "train": {},
        "signal": {
            "accuracy": {
                "correct": correct / pairs,
                "correct_ci95": wilson(correct, pairs),
                "pairs": pairs,
                "tie": 0.0,
            }
        },
        "evaluation": _evaluation(per_prompt),
    }


def test_rounds_say_which_changes_exceed_their_uncertainty():
    reports = [
        _report(1, 2, 40, [0.0] * 20),
        _report(2, 30, 40, [1.0] * 18 + [0.0] * 2),  # a large jump on both figures: significant
        _report(3, 29, 40, [1.0] * 17 + [0.0] * 3),  # one record and one prompt less: within noise
    ]
    rounds = rounds_summary(reports, _evaluation([1.0] * 10 + [0.0] * 10))
    second, third = rounds["rounds"][1:]
    assert second["accuracy_change_significant"] and second["vs_previous"]["change_significant"]
    assert not third["accuracy_change_significant"] and not third["vs_previous"]["change_significant"]
    assert rounds["final_evaluation"]["vs_start"]["change"] == pytest.approx(0.5)
    assert rounds["final_evaluation"]["vs_start"]["change_significant"]
    table = format_rounds(rounds)
    assert "0.75 [0.60, 0.86]*" in table  # 30 of 40 with its Wilson interval, marked as a real change
    assert "0.72 [0.57, 0.84] " in table  # 29 of 40: no mark
    final = table.splitlines()[-2]
    assert "within noise" not in final and "+0.50 [0.24, 0.70] significant (exact McNemar p 0.002)" in final


def test_evaluate_compares_models_on_the_same_prompts():
    before = [0.0, 0.5, 0.5, 0.0] * 5
    rows = [{"follows_good_per_prompt": before}, {"follows_good_per_prompt": [min(x + 0.5, 1.0) for x in before]}]
    compare_with_first(rows)
    change = rows[1]["vs_first"]
    assert change["change"] == pytest.approx(0.5) and change["change_test"] == "score test"
    assert change["change_significant"]  # every prompt moved up: the paired interval is above 0
    assert "vs_first" not in rows[0]


def zero_width(report, path="report"):
    """The paths of every interval (a key ending in `_ci95`) in `report` whose width is not positive."""
    found = []
    if isinstance(report, dict):
        for key, value in report.items():
            if key.endswith("ci95") and isinstance(value, list) and len(value) == 2:
                found += [f"{path}.{key}"] if not value[1] > value[0] else []
            elif key.endswith("ci95") and isinstance(value, dict):
                found += [f"{path}.{key}.{k}" for k, v in value.items() if v is not None and not v[1] > v[0]]
            else:
                found += zero_width(value, f"{path}.{key}")
    elif isinstance(report, list):
        for i, value in enumerate(report):
            found += zero_width(value, f"{path}[{i}]")
    return found


def test_no_report_claims_certainty_on_all_zero_data(monkeypatch):
    """Every report built from samples where nothing varies (no answer follows, every length equal, every gap 0)
    keeps intervals of positive width, or gives none with a note: `evaluation.json`, `rounds.json`, `signal.json`,
    the generation summary's signal (`summary.json`, the dataset card) and `calibration.json`."""
    from types import SimpleNamespace

    from trl_sso.data import make_record
    from trl_sso.principles import known_features
    from trl_sso.scripts import evaluate
    from trl_sso.scripts.calibrate import score_cell
    from trl_sso.signal import heldout
    from trl_sso.signal.onpolicy import onpolicy_report
    from trl_sso.signal.report import signal_report

    features = known_features()
    answer = SimpleNamespace(text="word " * 80, num_tokens=96, finished=False)  # long, cut: follows no good side

    class Sampler:
        def sample(self, prompts, *args):
            return [answer for _ in prompts]

    brevity = {"Brevity": features["Brevity"]}
    rows = [{"model": str(i), **heldout.score_answers(Sampler(), ["Q?"] * 16, brevity)[0]} for i in range(2)]
    evaluate.compare_with_first(rows)
    evaluation = {"prompts": 16, "features": ["Brevity"], "models": rows}
    assert rows[1]["vs_first"]["change"] == 0 and "tokens_change_note" in rows[1]["vs_first"]
    assert rows[0]["truncated"] == 1.0 and rows[0]["mean_tokens_ci95"] is None and "mean_tokens_note" in rows[0]

    values = {column: [-1.0] * 16 for column in ("chosen", "rejected", "original")}
    signal = {"onpolicy": onpolicy_report(values), "evaluation": rows[0]}
    assert signal["onpolicy"]["gap_to_original_ci95"]["chosen"] is None
    assert "all 16 values equal 0" in signal["onpolicy"]["gap_to_original_notes"]["chosen"]

    records = [
        make_record(
            "Q?",
            "word " * 60,
            "word " * 60,
            "word " * 60,
            "P",
            "N",
            conversational=True,
            features=["Brevity"],
            chosen_tokens=96,
            rejected_tokens=96,
            original_tokens=96,
            chosen_finished=False,
            rejected_finished=False,
            original_finished=False,
        )
        for _ in range(8)
    ]
    summary = signal_report(records, features)
    assert summary["length"]["mean_ci95"]["chosen"] is None and summary["length"]["mean_notes"]["chosen"]

    def report(t):
        return {
            "round": t,
            "mean_tokens": {"chosen": 96.0, "rejected": 96.0, "original": 96.0},
            "train": {},
            "signal": {
                "accuracy": summary["accuracy"]["overall"],
                "onpolicy": signal["onpolicy"],
                "length": summary["length"],
            },
            "evaluation": rows[0],
        }

    rounds = rounds_summary([report(1), report(2)], rows[1])
    assert (
        rounds["final_evaluation"]["vs_start"]["change_ci95"][0]
        < 0
        < rounds["final_evaluation"]["vs_start"]["change_ci95"][1]
    )
    calibration = score_cell([0.0] * 16, [0.0] * 16, [0.0] * 16)
    for name, built in {
        "evaluation.json": evaluation,
        "signal.json": signal,
        "summary.json": summary,
        "rounds.json": rounds,
        "calibration.json": calibration,
    }.items():
        assert zero_width(built) == [], name
    table = format_rounds(rounds)
    assert "[0.00, 0.00]" not in table and "0.00 [-0.19, 0.19]" in table  # 16 prompts: room up to 0.19 either way


def test_bench_signal_comparisons_never_claim_certainty(monkeypatch):
    """The experiment's comparisons (`tests/benchmarks/bench_signal.py`) on data where nothing differs: intervals of
    positive width, or none; never "equivalent" without an interval inside the margin."""
    import importlib.util
    from pathlib import Path

    for key in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_VERBOSITY", "TQDM_DISABLE"):
        monkeypatch.setenv(key, os.environ.get(key, "0" if key == "TQDM_DISABLE" else "1"))  # restored afterwards
    path = Path(__file__).parent / "benchmarks" / "bench_signal.py"
    spec = importlib.util.spec_from_file_location("bench_signal", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    same = bench.paired([0] * 8, [0] * 8)
    assert zero_width({"r_ci95": same["ci95"], "s_ci95": same["ci90"]}) == [] and not same["significant"]
    assert same["equivalent"] is False  # 8 prompts: the 90% interval reaches 0.25 either way, past the margin
    constant = bench.independent([1.0] * 5, [1.0] * 5, 0.25)
    assert constant["ci95"] is None and not constant["equivalent"] and not constant["significant"]
    assert "inconclusive" in bench.verdict(constant, 0.25)
    # 40 prompts, none following under either policy: the 90% interval is ±0.063, inside ±0.10
    assert bench.verdict(bench.paired([0] * 40, [0] * 40), 0.1).startswith("equivalent")


def test_the_experiments_readme_table_is_recomputed_from_its_raw_results():
    """The experiment's committed results (`tests/benchmarks/results/bench_signal/`): the held-out comparisons of its
    report follow from the raw per-prompt outcomes, and the README shows its table as the run printed it."""
    import json
    from pathlib import Path

    folder = Path(__file__).parent / "benchmarks" / "results" / "bench_signal"
    rows = [json.loads(line) for line in (folder / "raw.jsonl").read_text().splitlines()]
    final = {}
    for row in rows:
        if row.get("policy") == "final":
            final.setdefault(row["arm"], {})[row["prompt"]] = row["follows"]
    outcomes = {arm: [by_prompt[i] for i in sorted(by_prompt)] for arm, by_prompt in final.items()}
    report = json.loads((folder / "bench_signal.json").read_text())["endpoints"]["held_out"]
    for label, (a, b) in {"SSO - PBAA": ("SSO", "PBAA"), "SSO - unchanged": ("SSO", "unchanged"),
                          "PBAA - unchanged": ("PBAA", "unchanged")}.items():  # fmt: skip
        recomputed = paired_score_change(outcomes[a], outcomes[b])
        assert recomputed["change"] == pytest.approx(report[label]["change"])
        assert recomputed["ci95"] == pytest.approx(report[label]["ci95"])
        assert recomputed["p_value"] == pytest.approx(report[label]["p_value"])
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert (folder / "bench_signal.md").read_text().strip() in readme
