"""Re-runs change nothing: a training that reached its end is reused, not trained further (also when the process was
SIGKILLed between the end of training and the round's report), and publishing again adds only what is missing."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import argv

from trl_sso.cli.main import main


pytestmark = pytest.mark.slow  # end-to-end: outside the fast subset (`-m "not slow"`)


def hashes(folder) -> dict[str, str]:
    """The sha256 of every file under `folder`, by relative path (checkpoints included)."""
    folder = Path(folder)
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


STEPS = "--max_steps 2 --save_steps 1 --lr_scheduler_type constant"


@pytest.mark.parametrize("command,extra", [("train", "--use_peft --lora_r 4"), ("reward", "--eval_split_ratio 0.5")])
def test_a_finished_training_run_again_changes_nothing(
    command,
    extra,
    tiny_model_dir,
    data_folder,  # noqa: F811
    tmp_path,
    capsys,
):
    out = tmp_path / "out"
    options = argv(command, tiny_model_dir, data_folder, out, f"{STEPS} {extra}")
    assert main(options) == 0
    before = hashes(out)
    assert any(name.startswith("checkpoint-2/") for name in before)
    capsys.readouterr()
    assert main(options) == 0
    assert "already reached step 2 of 2" in capsys.readouterr().out
    assert hashes(out) == before  # the same files, byte for byte: no checkpoint-3, the same weights and reports
    # a longer run still resumes from the last checkpoint
    assert main([*options, "--max_steps", "3"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


ITERATE = (
    "--rounds 1 --num_prompts 4 --batch_size 2 --max_completion_length 8 --drop_revealing false --max_steps 2 "
    "--per_device_train_batch_size 2 --save_steps 1 --learning_rate 1e-3 --lr_scheduler_type constant "
    "--gradient_checkpointing false --report_to none --max_length 256 --dataloader_pin_memory false "
    "--logging_steps 1 --round_signal false --use_peft --lora_r 4 --lora_target_modules q_proj v_proj"
)

# Run `trl-sso iterate` and SIGKILL the process in a window after round 1's last training step: before the final
# save of the adapter (only checkpoint-2 holds the end), or after it, before the next policy and the report.
KILLER = """
import os, signal, sys
from trl_sso import trainer
from trl_sso.scripts import common

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "before-the-final-save":
    save_model = trainer.SSOTrainer.save_model
    trainer.SSOTrainer.save_model = lambda self, output_dir=None, _internal_call=False: (
        save_model(self, output_dir, _internal_call) if _internal_call else kill()
    )
else:
    common.save_next_policy = kill  # before `iterate` imports it
from trl_sso.cli.main import main
main(["iterate", *sys.argv[2:]])
"""


@pytest.mark.parametrize("window", ["before-the-final-save", "after-the-final-save"])
def test_iterate_killed_between_training_and_report_resumes_to_the_same_round(window, tiny_model_dir, tmp_path):
    def options(folder):
        return ["--model_name_or_path", tiny_model_dir, "--output_dir", str(folder), *ITERATE.split()]

    assert main(["iterate", *options(tmp_path / "reference")]) == 0
    run = tmp_path / "run"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, window, *options(run)], capture_output=True, text=True, env=env, timeout=600
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    train = run / "round_1" / "train"
    assert (train / "checkpoint-2").is_dir() and not (run / "round_1" / "report.json").exists()
    assert (train / "adapter_model.safetensors").exists() is (window == "after-the-final-save")
    assert main(["iterate", *options(run)]) == 0
    ours, theirs = (hashes(root / "round_1") for root in (run, tmp_path / "reference"))
    assert not any(name.startswith("train/checkpoint-3") for name in ours)  # nothing trained past the end
    for name in (
        "train/adapter_model.safetensors",
        "policy/model.safetensors",
        "data/data/train-00000-of-00001.parquet",
    ):
        assert ours[name] == theirs[name], name
    report, expected = (
        json.loads((root / "round_1" / "report.json").read_text()) for root in (run, tmp_path / "reference")
    )
    assert report.keys() == expected.keys() and report["train"].keys() == expected["train"].keys()
    for key, value in expected["train"].items():  # the loss, margins and W of the round, to fp32 summation of losses
        assert report["train"][key] == pytest.approx(value, rel=1e-6), key
    assert {k: v for k, v in report.items() if k != "train"} == {k: v for k, v in expected.items() if k != "train"}
