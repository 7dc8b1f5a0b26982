"""`trl-sso inspect` and `trl-sso evaluate` end to end on a tiny random model: the report, its files and plots, the
reward-model verdicts, and one-line errors for bad input."""

import json
import os

import pytest

from trl_sso.cli.main import main


@pytest.fixture
def verifiable_data(tmp_path, tokenizer):
    """A generated folder whose records carry verifiable features (scripted policy, fast)."""
    from conftest import make

    make(tmp_path, tokenizer, features=["verifiable"], num_features=1, concision_prob=0.0, num_prompts=6).run()
    return tmp_path / "out"


@pytest.fixture
def tiny_reward_model(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    config = LlamaConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(0)
    path = tmp_path / "rm"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return str(path)


def test_inspect_end_to_end(verifiable_data, tiny_model_dir, tiny_reward_model, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [
        "inspect",
        str(verifiable_data),
        "--model",
        tiny_model_dir,
        "--reward_model",
        tiny_reward_model,
        "--output_dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "accuracy on verifiable features (6 pairs)" in printed and "on-policyness under" in printed
    assert "records/s" in printed and "r(y+) > r(y-)" in printed
    report = json.loads((out / "signal.json").read_text())
    assert report["records"] == 6 and report["accuracy"]["overall"]["pairs"] == 6
    assert set(report["onpolicy"]["mean_logp"]) == {"chosen", "rejected", "original"}
    assert 0.0 <= report["reward"]["chosen_wins"] <= 1.0
    for plot in ("accuracy.png", "onpolicy.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_defaults_and_skips(verifiable_data, capsys):
    # The recorded generator is the packaged model's Hub id; skipping on-policyness needs no model at all
    assert main(["inspect", str(verifiable_data), "--skip_onpolicy"]) == 0
    assert "on-policyness: not measured (`--skip_onpolicy`)" in capsys.readouterr().out
    assert (verifiable_data / "signal" / "signal.json").exists()  # default output folder: beside the data


@pytest.mark.parametrize(
    "make_input,extra,fragment",
    [
        (lambda p: p.write_text('{"prompt": "Hi", "chosen": "a"}\n'), [], "missing the SSO column(s) ['rejected'"),
        (lambda p: p.write_text(""), [], "is empty: it holds no rows"),
        (lambda p: p.write_text("not json at all\n"), [], "line 1, is not valid JSON"),
        (None, ["--model", "/does/not/exist"], "no such folder, and not a Hub model id"),
        (None, ["--num_records", "0"], "`num_records` must be at least 1"),
    ],
)
def test_inspect_bad_input_is_one_line(verifiable_data, tmp_path, capsys, make_input, extra, fragment):
    source = str(verifiable_data)
    if make_input is not None:
        source = tmp_path / "data.jsonl"
        make_input(source)
    code = main(["inspect", str(source), "--output_dir", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("trl-sso inspect: error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and fragment in errors[0], err


def test_evaluate_compares_models(tiny_model_dir, tiny_reward_model, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--model",
        tiny_model_dir,
        "--model",
        tiny_model_dir,
        "--num_prompts",
        "4",
        "--max_completion_length",
        "6",
        "--reward_model",
        tiny_reward_model,
        "--output_dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Held-out evaluation on 4 prompts" in printed
    report = json.loads((out / "evaluation.json").read_text())
    assert [row["model"] for row in report["models"]] == [os.path.basename(tiny_model_dir)] * 2  # no local path
    first, second = report["models"]
    assert first["follows_good"] == second["follows_good"]  # greedy answers: the same model answers the same
    assert first["win_rate_vs_first"] == 0.0 and set(first["follows_good"]) == set(report["features"])
    assert (out / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", "--features", "Accuracy", "--output_dir", str(out)]) == 2
    assert "have no checker" in capsys.readouterr().err


def test_evaluation_prompts_are_held_out():
    from trl_sso.generation.prompts import packaged_prompts

    train = {r["prompt"] for r in packaged_prompts("default_prompts")}
    held_out = [r["prompt"] for r in packaged_prompts("eval_prompts")]
    assert len(held_out) == 40 and not set(held_out) & train


def test_published_dataset_card_carries_the_signal_and_its_plot(hub, verifiable_data):  # noqa: F811
    from huggingface_hub import DatasetCard, HfApi, hf_hub_download

    from trl_sso.hub import push

    assert (verifiable_data / "accuracy.png").exists()  # drawn by the generator beside the data
    push(verifiable_data, "tester/sso-signal")
    files = HfApi().list_repo_files("tester/sso-signal", repo_type="dataset")
    assert "signal/iteration_1/accuracy.png" in files
    card = DatasetCard.load(hf_hub_download("tester/sso-signal", "README.md", repo_type="dataset"))
    assert "## Signal quality" in card.text and "](signal/iteration_1/accuracy.png)" in card.text
    assert "sso" in card.data.tags and card.data.configs
