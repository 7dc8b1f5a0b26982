"""The 95% intervals of the signal figures, against published values and cases worked by hand."""

import pytest

from trl_sso.scripts.evaluate import compare_with_first
from trl_sso.scripts.iterate import format_rounds, rounds_summary
from trl_sso.signal.intervals import bootstrap_mean, excludes_zero, share_difference, wilson


def test_wilson_known_values():
    # 0 of 10: [0, z^2 / (n + z^2)]; 10 of 10 mirrors it; 5 of 10 is symmetric around one half
    assert wilson(0, 10) == pytest.approx([0.0, 1.959963984540054**2 / (10 + 1.959963984540054**2)], abs=1e-12)
    assert wilson(10, 10) == pytest.approx([1 - 0.27753, 1.0], abs=1e-5)
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.23659, abs=1e-5) and low + high == pytest.approx(1.0)
    assert wilson(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)  # Newcombe (1998), method 3 example
    assert wilson(0, 0) is None


def test_newcombe_difference_known_values():
    assert share_difference(56, 70, 48, 80) == pytest.approx([0.0524, 0.3339], abs=1e-4)  # Newcombe (1998), method 10
    assert share_difference(9, 10, 3, 10) == pytest.approx([0.1705, 0.8090], abs=1e-4)
    assert share_difference(1, 0, 1, 1) is None


def test_bootstrap_mean_is_seeded_and_brackets_the_mean():
    values = [0.0, 1.0] * 10
    interval = bootstrap_mean(values)
    assert interval == bootstrap_mean(values)  # the same report when computed again
    assert interval[0] < 0.5 < interval[1]
    assert interval[1] - interval[0] == pytest.approx(2 * 1.96 * 0.5 / 20**0.5, abs=0.08)  # about the normal width
    assert bootstrap_mean([3.0, 3.0, 3.0]) == [3.0, 3.0]
    assert bootstrap_mean([]) is None


def test_significance_is_an_interval_off_zero():
    assert excludes_zero([0.1, 0.3]) and excludes_zero([-0.3, -0.1])
    assert not excludes_zero([-0.1, 0.3]) and not excludes_zero(None)


def _evaluation(per_prompt):
    mean = sum(per_prompt) / len(per_prompt)
    return {
        "follows_good_mean": mean,
        "follows_good_mean_ci95": bootstrap_mean(per_prompt),
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
    assert second["accuracy_change_significant"] and second["eval_change_significant"]
    assert not third["accuracy_change_significant"] and not third["eval_change_significant"]
    assert rounds["final_evaluation"]["change_vs_start"] == pytest.approx(0.5)
    assert rounds["final_evaluation"]["change_vs_start_significant"]
    table = format_rounds(rounds)
    assert "0.75 [0.60, 0.86]*" in table  # 30 of 40 with its Wilson interval, marked as a real change
    assert "0.72 [0.57, 0.84] " in table  # 29 of 40: no mark
    assert "within" not in table.splitlines()[-2] and "larger than its uncertainty" in table


def test_evaluate_compares_models_on_the_same_prompts():
    rows = [{"follows_good_per_prompt": [0.0, 0.5, 0.5, 0.0]}, {"follows_good_per_prompt": [0.5, 0.5, 1.0, 0.5]}]
    compare_with_first(rows)
    assert rows[1]["change_vs_first"] == pytest.approx(0.375)
    assert rows[1]["change_vs_first_significant"]  # every prompt moved up or stayed: the paired interval is above 0
    assert "change_vs_first" not in rows[0]
