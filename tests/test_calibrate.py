"""`trl-sso calibrate`: the figures of one cell from known checker scores, the recommendation, and a short run of the
command with the packaged model."""

import json

import pytest

from trl_sso.scripts.calibrate import recommend, score_cell


def test_a_cell_from_known_scores():
    # 4 prompts: y+ follows on 3, y- follows on 1 (so breaks on 3), plain answers follow on 2
    cell = score_cell(good=[1.0, 1.0, 1.0, 0.0], bad=[0.0, 0.0, 1.0, 0.0], plain=[1.0, 0.0, 1.0, 0.0])
    assert cell["follows_good"] == 0.75 and cell["breaks_good"] == 0.75 and cell["base_rate"] == 0.5
    assert (cell["correct"], cell["tie"], cell["wrong"]) == (0.5, 0.5, 0.0)
    assert cell["lift"] == 0.5 and cell["correct_ci95"] == pytest.approx([0.15004, 0.84996], abs=1e-4)
    assert cell["signal"] is False  # 2 wins of 4 prompts: exact McNemar p = 0.5
    assert cell["lift_p_value"] == 0.5
    strong = score_cell(good=[1.0] * 12, bad=[0.0] * 12, plain=[0.0] * 12)
    # every prompt a win: the lift is 1, yet 12 prompts leave its interval room below (never a point)
    assert strong["signal"] is True and strong["lift_ci95"][1] == 1.0 and 0.6 < strong["lift_ci95"][0] < 0.7
    backwards = score_cell(good=[0.0] * 12, bad=[1.0] * 12, plain=[0.0] * 12)
    assert backwards["signal"] is False and backwards["wrong"] == 1.0  # a signal the wrong way round is no signal


def test_the_recommendation_counts_features_with_a_signal():
    strong = score_cell([1.0] * 12, [0.0] * 12, [0.0] * 12)
    none = score_cell([0.0] * 12, [0.0] * 12, [0.0] * 12)
    cells = {"system": {"A": none, "B": none}, "after_question": {"A": strong, "B": none}}
    assert recommend(cells) == {"placement": "after_question", "features": ["A"], "mean_correct": 0.5}
    assert recommend({"system": {"A": none}})["placement"] is None  # nothing to recommend, and it says so


@pytest.mark.slow
def test_calibrate_command_with_the_packaged_model(tmp_path, capsys):
    from trl_sso.cli.main import main

    out = tmp_path / "calibration"
    argv = ["calibrate", "--num_prompts", "2", "--features", "Brevity", "Lowercase", "--placements", "system"]
    argv += ["after_question", "--max_completion_length", "12", "--output_dir", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "calibration.json").read_text())
    assert report["placements"] == ["system", "after_question"] and report["features"] == ["Brevity", "Lowercase"]
    assert report["answers"] == 2 * (1 + 2 * 2 * 2)  # plain once, then good and bad per feature and placement
    for placement in report["placements"]:
        for cell in report["cells"][placement].values():
            assert cell["prompts"] == 2 and 0.0 <= cell["correct_ci95"][0] <= cell["correct_ci95"][1] <= 1.0
    assert (out / "calibration.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "after_question   Brevity" in printed and "[95% interval]" in printed
    assert main(["calibrate", "--features", "Helpfulness", "--output_dir", str(out)]) == 2  # qualitative: no checker
    assert "inspect --judge" in capsys.readouterr().err
