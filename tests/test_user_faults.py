"""What a demanding user tried and got silently accepted or a traceback for, each now one line and exit 2 (or a
counted notice): online runs that cannot take a step, re-runs with other settings, options without effect, odd
prompts, two runs in one folder. Each refusal leaves no output folder behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import argv, data_folder, message_lines  # noqa: F401  (a fixture)

from trl_sso.cli.main import main
from trl_sso.files import LOCK_FILE


def one_error(capsys, command: str) -> str:
    lines = [line for line in message_lines(capsys.readouterr().err) if line.startswith("trl-sso")]
    assert len(lines) == 1 and lines[0].startswith(f"trl-sso {command}: error: "), lines
    return lines[0]


def write_prompts(path: Path, prompts: list) -> str:
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))
    return str(path)


ONLINE = (
    "--max_completion_length 4 --features verifiable --num_features 1 --drop_revealing false "
    "--min_response_chars 0 --report_to none --save_strategy no --logging_steps 1 --gradient_checkpointing false "
    "--dataloader_pin_memory false --max_steps 1"
)


def online(model, prompts, out, extra=""):
    return ["online", "--model_name_or_path", model, "--dataset_name", prompts, "--output_dir", str(out)] + (
        f"{ONLINE} {extra}".split()
    )


@pytest.mark.parametrize(
    "prompts,extra,numbers",
    [
        (4, "--per_device_train_batch_size 2 --steps_per_generation 3 --gradient_accumulation_steps 2", "(2) x"),
        (4, "--per_device_train_batch_size 2 --steps_per_generation 3", "`steps_per_generation` (3) = 6 prompts"),
        (1, "--per_device_train_batch_size 2", "1 prompts give 0 generations"),
        (["a?", "", "b?", "c?"], "--per_device_train_batch_size 4", "3 prompts (1 dropped as empty) give 0"),
    ],
    ids=["accumulation", "steps-per-generation", "one-prompt", "one-empty"],
)
def test_online_training_that_cannot_take_a_step_stops_before_loading_a_model(
    prompts, extra, numbers, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    import transformers

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    prompts = prompts if isinstance(prompts, list) else [f"Question {i}?" for i in range(prompts)]
    path = write_prompts(tmp_path / "prompts.jsonl", prompts)
    assert main(online(tiny_model_dir, path, tmp_path / "out", extra)) == 2
    message = one_error(capsys, "online")
    assert "give 0 generations of `per_device_train_batch_size`" in message and numbers in message
    assert "lower `steps_per_generation`" in message and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_run_with_no_optimizer_step_never_exits_0(tiny_model_dir, data_folder, tmp_path, capsys, monkeypatch):  # noqa: F811
    """The safety net behind the check above: a trainer that ends at step 0 saves nothing and exits 2."""
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "train", lambda self, **kwargs: None)
    assert main(argv("train", tiny_model_dir, data_folder, tmp_path / "out", "--max_steps 1")) == 2
    assert "without a single optimizer step" in one_error(capsys, "train")
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_finished_run_again_with_other_settings_is_refused(tiny_model_dir, data_folder, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "train"
    base = "--max_steps 1 --use_peft --lora_r 4"
    assert main(argv("train", tiny_model_dir, data_folder, out, base)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    changed = f"{base} --beta 0.2 --sso_steer_coef 0.2"
    assert main(argv("train", tiny_model_dir, data_folder, out, changed)) == 2
    message = one_error(capsys, "train")
    assert "beta 0.1 -> 0.2" in message and "sso_steer_coef 0.1 -> 0.2" in message
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # settings that do not change the result may differ
    assert main(argv("train", tiny_model_dir, data_folder, out, f"{base} --logging_steps 5 --save_steps 7")) == 0

    prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Question {i}?" for i in range(4)])
    first = online(tiny_model_dir, prompts, tmp_path / "online", "--per_device_train_batch_size 2")
    assert main(first) == 0
    capsys.readouterr()
    assert main([*first, "--temperature", "0.9", "--features", "Lowercase"]) == 2
    message = one_error(capsys, "online")
    assert "temperature 0.7 -> 0.9" in message and "features ['verifiable'] -> ['Lowercase']" in message


@pytest.mark.parametrize(
    "command,flags,option,switch",
    [
        ("generate", "--vllm_mode server --vllm_server_base_url http://127.0.0.1:9", "vllm_mode", "use_vllm"),
        ("generate", "--judge_model tiny-judge", "judge_model", "judge"),
        ("inspect", "--judge_timeout 5", "judge_timeout", "judge"),
        ("online", "--vllm_gpu_memory_utilization 0.5", "vllm_gpu_memory_utilization", "use_vllm"),
    ],
)
def test_an_option_without_its_switch_is_refused_at_parse_time(command, flags, option, switch, tmp_path, capsys):
    given = [command] + (["data.jsonl"] if command == "inspect" else []) + flags.split()
    assert main([*given, "--output_dir", str(tmp_path / "out")]) == 2
    message = one_error(capsys, command)
    assert f"`{option}` only applies with `{switch}`" in message and not (tmp_path / "out").exists()


def test_fewer_prompts_than_asked_and_empty_ones_are_said(tmp_path, caplog):
    from trl_sso.generation.prompts import load_prompts

    path = write_prompts(tmp_path / "prompts.jsonl", ["First?", "  ", "Third?", "Fourth?"])
    with caplog.at_level("WARNING"):
        prompts = load_prompts(path, num_prompts=10)
    assert len(prompts) == 3 and prompts.empty_rows == (1,)
    assert "Dropped 1 empty prompts" in caplog.text and "(rows 1)" in caplog.text
    assert "Asked for 10 prompts (`--num_prompts`), but" in caplog.text and "using those 3" in caplog.text


@pytest.mark.slow
def test_one_prompt_rule_for_generate_and_online(tiny_model_dir, tmp_path, capsys):
    """Empty prompts: dropped and counted in the summary. A system message: refused with its row, by `generate`,
    `online` (and `train`, whose records `trl_sso.data.validate_record` checks the same way). A prompt that fills
    `max_length`: dropped and counted by `online`, as `train` drops it."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["First?", "", "Third?", "Fourth?"])
    command = ["generate", "--model_name_or_path", tiny_model_dir, "--prompts", prompts, "--batch_size", "2"]
    command += ["--max_completion_length", "4", "--drop_revealing", "false", "--min_response_chars", "0"]
    command += ["--output_dir", str(tmp_path / "gen")]
    assert main(command) == 0
    assert "from 3 prompts (1 dropped as empty) to" in capsys.readouterr().out
    summary = json.loads((tmp_path / "gen" / "summary.json").read_text())
    assert summary["empty_prompts_dropped"] == 1

    system = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi?"}]
    with_system = write_prompts(tmp_path / "system.jsonl", [[{"role": "user", "content": "Hello?"}], system])
    command[command.index("--prompts") + 1] = with_system
    command[-1] = str(tmp_path / "gen2")
    assert main(command) == 2
    message = one_error(capsys, "generate")
    assert "Row 1 of the prompt column 'prompt'" in message and "holds a system message" in message
    assert not (tmp_path / "gen2").exists()
    assert main(online(tiny_model_dir, with_system, tmp_path / "on")) == 2
    assert "holds a system message" in one_error(capsys, "online")

    long = write_prompts(tmp_path / "long.jsonl", ["Short?"] * 2 + ["word " * 300])
    out = tmp_path / "on-long"
    assert main(online(tiny_model_dir, long, out, "--per_device_train_batch_size 2 --max_length 64")) == 0
    assert "Dropped 1 of 3 prompts that fill `max_length=64`" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_run_in_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(
    tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "gen"
    command = ["generate", "--model_name_or_path", tiny_model_dir, "--num_prompts", "2", "--batch_size", "2"]
    command += ["--max_completion_length", "4", "--drop_revealing", "false", "--min_response_chars", "0"]
    command += ["--output_dir", str(out)]
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(f"{runner.pid} generate\n")
        assert main(command) == 2
        message = one_error(capsys, "generate")
        assert f"is in use by another trl-sso run (process {runner.pid}" in message
        assert sorted(os.listdir(out)) == [LOCK_FILE]  # nothing written beside the other run's lock
    finally:
        runner.kill()
        runner.wait()
    assert main(command) == 0  # its process is gone: the lock is taken over, and released at the end
    taken = f"Took over {out / LOCK_FILE} from process {runner.pid}, which is no longer running"
    assert taken in capsys.readouterr().err
    assert not (out / LOCK_FILE).exists() and (out / "summary.json").is_file()
