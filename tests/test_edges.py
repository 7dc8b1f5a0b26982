"""Edges of resume and bad input: processes killed with SIGKILL resume to honest reports (the loss of the whole run)
and to exactly the records of an uninterrupted run, with the leftovers of the crash cleared; every bad input is one
line on stderr with exit code 2, naming the file, the row or the flag at fault."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import argv

from trl_sso.cli.main import main
from trl_sso.scripts.common import whole_run_train_loss


pytestmark = pytest.mark.slow  # end-to-end: outside the fast subset (`-m "not slow"`)


def kill_when(command: list[str], ready, timeout: float = 300) -> None:
    """Start `command`, SIGKILL it as soon as `ready()` holds, and check that it was still running then."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before the kill: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "never reached the point of the kill"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_whole_run_train_loss_by_hand():
    history = [{"loss": 2.0, "step": 2}, {"loss": 1.0, "step": 4}, {"loss": 0.5, "step": 6}, {"train_loss": 9}]
    # Resumed at step 4 (windows of 2 steps: 2.0 and 1.0), then 2 more steps whose mean transformers gives as 0.5
    assert whole_run_train_loss(history, 4, 0.5, 6) == pytest.approx((2 * 2.0 + 2 * 1.0 + 2 * 0.5) / 6)
    assert whole_run_train_loss(history, 0, 0.7, 6) == pytest.approx(0.7)  # not resumed: unchanged


def test_train_killed_resumes_to_the_loss_of_the_whole_run(tiny_model_dir, data_folder, tmp_path, capsys):  # noqa: F811
    extra = "--max_steps 10 --save_steps 1 --logging_steps 1"
    reference = tmp_path / "reference"
    assert main(argv("train", tiny_model_dir, data_folder, reference, extra)) == 0
    run = tmp_path / "run"
    command = [sys.executable, "-m", "trl_sso.cli.main", *argv("train", tiny_model_dir, data_folder, run, extra)]
    kill_when(command, lambda: (run / "checkpoint-4" / "trainer_state.json").is_file())
    assert not (run / "train_results.json").exists()
    (run / "checkpoint-99").mkdir()  # a checkpoint cut short while saving: passed over
    capsys.readouterr()
    assert main(argv("train", tiny_model_dir, data_folder, run, extra)) == 0
    printed = capsys.readouterr().out
    assert "Resuming from" in printed and "checkpoint-99" not in printed
    resumed_at = int(printed.split("checkpoint-")[1].split(".")[0])
    assert 4 <= resumed_at < 10
    ours, theirs = (json.loads((folder / "train_results.json").read_text()) for folder in (run, reference))
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)  # not the loss of the last steps only


def test_generate_killed_resumes_to_exactly_the_records(tiny_model_dir, tmp_path):
    from datasets import load_dataset

    options = "--num_prompts 24 --batch_size 2 --max_completion_length 8 --drop_revealing false --seed 3".split()
    base = ["generate", "--model_name_or_path", tiny_model_dir, *options]
    assert main([*base, "--output_dir", str(tmp_path / "reference")]) == 0
    out = tmp_path / "run"
    command = [sys.executable, "-m", "trl_sso.cli.main", *base, "--output_dir", str(out)]
    kill_when(command, lambda: (out / "batches" / "batch-000002.json").is_file())
    assert not (out / "summary.json").exists()
    # What crashed writes leave behind: half-written batch files and a staging folder of the merge
    (out / "batches" / ".batch-000011.json.k1ll3d.tmp").write_text('{"records": [{"prompt"')
    (out / ".data.k1ll3d.tmp").mkdir()
    (out / ".data.k1ll3d.tmp" / "train-00000-of-00001.parquet").write_bytes(b"junk")
    assert main([*base, "--output_dir", str(out)]) == 0
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and os.listdir(out / "data") == ["train-00000-of-00001.parquet"]
    rows = [load_dataset(str(folder), split="train").to_list() for folder in (out, tmp_path / "reference")]
    summary = json.loads((out / "summary.json").read_text())
    assert rows[0] == rows[1] and len(rows[0]) == summary["num_records"]


def write(path, content: str | bytes):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def record(**fields) -> str:
    row = {
        "prompt": [{"role": "user", "content": "Name a colour."}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "No."}],
        "original": [{"role": "assistant", "content": "Red."}],
        "positive_system": "Answer helpfully.",
        "negative_system": "Answer unhelpfully.",
    }
    return json.dumps({**row, **fields})


TRAIN = "train --model_name_or_path {model} --dataset_name "
# (name, arguments after the command, first words of the expected message); `{tmp}` is the test's folder
BAD_INPUTS = [
    ("empty prompts file", "generate --prompts {tmp}/empty.jsonl", "is empty"),
    ("blank prompts file", "generate --prompts {tmp}/blank.jsonl", "is empty"),
    ("prompts not JSON", "generate --prompts {tmp}/text.jsonl", "line 1, is not valid JSON"),
    ("prompts in Latin-1", "generate --prompts {tmp}/latin1.jsonl", "is not UTF-8 text (byte 0xe9 on line 1)"),
    ("prompts as .txt", "generate --prompts {tmp}/prompts.txt", "use a .json, .jsonl, .csv or .parquet"),
    ("null prompt", "generate --prompts {tmp}/null.jsonl", "Row 1 of the prompt column 'prompt' of"),
    ("only blank prompts", "generate --prompts {tmp}/blanks.jsonl", "holds no non-empty prompt"),
    ("CSV header only", "generate --prompts {tmp}/header.csv", "holds no rows"),
    ("missing prompts file", "generate --prompts {tmp}/missing.jsonl", "does not exist"),
    ("missing local model", "generate --model_name_or_path {tmp}/no-model", "no such folder"),
    ("malformed model path", "evaluate --model_name_or_path a/b/c", "no such folder"),
    ("train without a model", "train --dataset_name {tmp}/data.jsonl", "`--model_name_or_path` is required"),
    ("reward without a model", "reward --dataset_name {tmp}/data.jsonl", "`--model_name_or_path` is required"),
    ("train on an empty file", TRAIN + "{tmp}/empty.jsonl", "is empty"),
    ("train on a missing path", TRAIN + "./no/such/data", "does not exist"),
    (
        "dataset not JSON",
        TRAIN + "{tmp}/text.jsonl",
        "line 1, is not valid JSON",
    ),
    ("null chosen", TRAIN + "{tmp}/null-chosen.jsonl", "null-chosen.jsonl': Row 1, column 'chosen'"),
    ("mixed formats", TRAIN + "{tmp}/mixed.jsonl", "mixes formats"),
    ("no SSO columns", TRAIN + "{tmp}/prompts.jsonl", "missing the SSO"),
]


@pytest.fixture
def bad_files(tmp_path):
    string_row = record(
        prompt="Name a colour.",
        chosen="Blue.",
        rejected="No.",
        original="Red.",
        positive_system="a",
        negative_system="b",
    )
    files = {
        "empty.jsonl": "",
        "blank.jsonl": "\n  \n",
        "text.jsonl": "hello world\nthis is not JSON\n",
        "latin1.jsonl": '{"prompt": "caf\xe9"}\n'.encode("latin-1"),
        "prompts.txt": "What is SSO?\n",
        "null.jsonl": '{"prompt": "Hi?"}\n{"prompt": null}\n',
        "blanks.jsonl": '{"prompt": "  "}\n{"prompt": ""}\n',
        "header.csv": "prompt\n",
        "prompts.jsonl": '{"prompt": "Hi?"}\n',
        "data.jsonl": record() + "\n",
        "null-chosen.jsonl": record() + "\n" + record(chosen=None) + "\n",
        "mixed.jsonl": record() + "\n" + string_row + "\n",
    }
    for name, content in files.items():
        write(tmp_path / name, content)
    return tmp_path


@pytest.mark.parametrize("name,arguments,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_code_2(name, arguments, message, bad_files, tiny_model_dir, capsys):
    argv = arguments.format(tmp=bad_files, model=tiny_model_dir).split()
    argv += ["--output_dir", str(bad_files / "out")]
    if argv[0] in ("train", "reward"):
        argv += "--max_steps 1 --report_to none --save_strategy no".split()
    assert main(argv) == 2, name
    error = capsys.readouterr().err.strip().splitlines()
    assert error and error[-1].startswith(f"trl-sso {argv[0]}: error:") and message in error[-1], error
    assert "Traceback" not in "\n".join(error)
