"""`trl-sso iterate` and `trl-sso pipeline` on a tiny random model: two online rounds, killed in round 2 and resumed
to the same artifacts; the v2 pipeline end to end; a two-process run; every recipe parses. Publishing the rounds:
tests/test_published.py."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import free_port, run_processes
from transformers import TrainerCallback


ROOT = Path(__file__).resolve().parents[1]


def options(model_dir, output_dir, *extra, command="iterate"):
    fixed = (
        "--num_prompts 4 --batch_size 2 --max_completion_length 8 --drop_revealing false --max_steps 3 "
        "--per_device_train_batch_size 2 --save_steps 1 --learning_rate 1e-3 --gradient_checkpointing false "
        "--report_to none --max_length 256 --dataloader_pin_memory false --logging_steps 1"
    )
    if command == "iterate":
        fixed += " --rounds 2 --eval_num_prompts 4 --eval_max_completion_length 8"
    return ["--model_name_or_path", model_dir, "--output_dir", str(output_dir), *fixed.split(), *extra]


def parse(command, argv):
    from trl_sso.cli.commands import parser

    return parser(command).parse_args_and_config(args=argv)


class KillInRound2(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith(os.path.join("round_2", "train")) and state.global_step == 2:
            raise KeyboardInterrupt  # like a kill in the middle of round 2's training


class Recorder(TrainerCallback):
    """Keeps what the trainer sends to the trackers."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.slow
def test_iterate_killed_in_round_two_resumes_to_the_same_artifacts(tiny_model_dir, tmp_path, caplog, capsys):
    import logging

    from datasets import load_dataset

    from trl_sso.scripts.iterate import iterate

    caplog.set_level(logging.INFO, logger="trl_sso")
    reference = iterate(*parse("iterate", options(tiny_model_dir, tmp_path / "ref")))
    with pytest.raises(KeyboardInterrupt):
        iterate(*parse("iterate", options(tiny_model_dir, tmp_path / "run")), callbacks=[KillInRound2()])
    assert (tmp_path / "run" / "round_1" / "report.json").exists()
    assert not (tmp_path / "run" / "round_2" / "report.json").exists()
    capsys.readouterr()
    caplog.clear()
    resumed = iterate(*parse("iterate", options(tiny_model_dir, tmp_path / "run")))
    # The resume says so: the finished round is skipped, round 2's training resumes from its checkpoint
    assert any("Round 1/2: finished in an earlier run" in r.getMessage() for r in caplog.records)
    assert f"Resuming from {tmp_path / 'run' / 'round_2' / 'train' / 'checkpoint-1'}" in capsys.readouterr().out
    assert [r["num_records"] for r in resumed] == [r["num_records"] for r in reference]
    for ours, theirs in zip(resumed, reference, strict=True):  # the loss of the whole run, not of the resumed steps
        assert ours["train"]["train_loss"] == pytest.approx(theirs["train"]["train_loss"], rel=1e-5)
    for t in (1, 2):
        a, b = (root / f"round_{t}" for root in (tmp_path / "ref", tmp_path / "run"))
        rows = [load_dataset(str(x / "data"), split="train").to_list() for x in (a, b)]
        assert rows[0] == rows[1]
        for (name, x), y in zip(weights(a / "policy").items(), weights(b / "policy").values()):
            torch.testing.assert_close(x, y, msg=name)
    report = json.loads((tmp_path / "run" / "round_2" / "report.json").read_text())
    name = f"{os.path.basename(tiny_model_dir)} (SSO round 1 policy)"  # reports carry no local path
    assert report["round"] == 2 and report["policy"] == name and str(tmp_path) not in json.dumps(report)
    generated = load_dataset(str(tmp_path / "run" / "round_2" / "data"), split="train")
    assert generated[0]["generator_model"] == name
    assert set(report["mean_tokens"]) == {"chosen", "rejected", "original"} and "train_loss" in report["train"]
    assert (tmp_path / "run" / "round_2" / "data" / "README.md").exists()  # the dataset card, locally
    # The signal of each round under its policy, the policy's held-out evaluation, and the rounds across the run
    assert set(report["signal"]) == {"accuracy", "onpolicy", "length"} and report["signal"]["onpolicy"]["mean_logp"]
    assert 0.0 <= report["evaluation"]["follows_good_mean"] <= 1.0
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert [r["round"] for r in rounds["rounds"]] == [1, 2] and rounds["final_evaluation"]["follows_good"]
    assert (tmp_path / "run" / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run" / "round_2" / "policy" / "rounds.png").exists()  # published with the round's policy


@pytest.mark.slow
def test_iterate_with_lora_merges_the_adapter_into_the_next_policy(tiny_model_dir, tmp_path):
    from trl_sso.scripts.iterate import iterate

    argv = options(
        tiny_model_dir, tmp_path / "lora", "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"
    )
    argv[argv.index("--rounds") + 1] = "1"
    logged = Recorder()
    iterate(*parse("iterate", argv), callbacks=[logged])
    # The round's generation summary reaches the trackers (`--report_to`) before its training
    first = logged.logs[0]
    assert first["generation/records"] >= 1 and {
        "generation/dropped",
        "generation/tokens_chosen",
        "generation/truncated",
    } <= set(first)
    round_dir = tmp_path / "lora" / "round_1"
    assert (round_dir / "train" / "adapter_config.json").exists()
    assert "library_name: peft" in (round_dir / "train" / "README.md").read_text()
    merged, base = weights(round_dir / "policy"), weights(tiny_model_dir)
    assert merged.keys() == base.keys()
    assert any(not torch.equal(merged[k], base[k]) for k in merged if "q_proj" in k)


@pytest.mark.slow
def test_pipeline_end_to_end(tiny_model_dir, tmp_path, caplog):
    import logging

    from trl_sso.scripts.pipeline import pipeline

    caplog.set_level(logging.INFO, logger="trl_sso")
    argv = options(tiny_model_dir, tmp_path / "v2", "--policy_num_prompts", "6", command="pipeline")
    report = pipeline(*parse("pipeline", argv))
    stages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Stage ")]
    assert [line.split(":")[0] for line in stages] == [f"Stage {i}/4" for i in range(1, 5)]  # a line per stage
    root = tmp_path / "v2"
    for folder in ("generator_data", "generator_train", "generator", "policy_data", "policy_train"):
        assert (root / folder).is_dir(), folder
    assert (
        json.loads((root / "generator_train" / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    )
    assert report["policy_data"] >= 1 and json.loads((root / "report.json").read_text()) == report
    summary = json.loads((root / "policy_data" / "summary.json").read_text())
    assert (
        summary["num_prompts"] == 6
        and summary["generator_model"] == f"{os.path.basename(tiny_model_dir)} (SSO generator)"
    )
    assert pipeline(*parse("pipeline", argv)) == report  # finished: a rerun does nothing


@pytest.mark.slow
def test_two_process_iterate(tiny_model_dir, tmp_path):
    port = free_port()
    command = [
        "accelerate",
        "launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate_configs" / "multi_cpu.yaml"),
        "--main_process_port",
        str(port),
        "-m",
        "trl_sso.cli.main",
        "iterate",
        *options(tiny_model_dir, tmp_path / "ddp"),
    ]
    run_processes(command)
    for t in (1, 2):
        assert (tmp_path / "ddp" / f"round_{t}" / "report.json").exists()
    state = json.loads((tmp_path / "ddp" / "round_2" / "train" / "checkpoint-3" / "trainer_state.json").read_text())
    records = json.loads((tmp_path / "ddp" / "round_2" / "report.json").read_text())["num_records"]
    # two processes of 2 examples each take 4 records a step (one process would take 2)
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(3 / -(-records // 4))


def recipe_command(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "--config" in first and path.name in first, f"{path.name}: no command header"
    for command in ("iterate", "pipeline", "online", "reward", "train", "generate"):
        if f" {command} " in first:
            return command
    raise AssertionError(f"{path.name}: unknown command in {first!r}")


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses_and_validates(path):
    assert parse(recipe_command(path), ["--config", str(path)])


def test_accelerate_configs_are_complete():
    import yaml

    folder = ROOT / "recipes" / "accelerate_configs"
    names = {p.stem for p in folder.glob("*.yaml")}
    assert {"single_gpu", "multi_gpu", "fsdp2", "deepspeed_zero2", "deepspeed_zero3", "multi_cpu"} <= names
    for path in folder.glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        assert config["compute_environment"] == "LOCAL_MACHINE" and "distributed_type" in config, path.name
