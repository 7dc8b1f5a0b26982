"""A token given with `--hub_token` is what every publishing command uses, and it reaches no blob of any commit on the
Hub (transformers' pushes during training included), no local file and no log."""

from pathlib import Path

import pytest
from conftest import argv

from trl_sso.cli.main import main


pytestmark = pytest.mark.slow  # end-to-end: outside the fast subset (`-m "not slow"`)


TOKEN = "hf_commandlinesecret0123456789"


def files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and secret in path.read_bytes()]


def test_a_command_line_token_reaches_no_commit_file_or_log(
    hub,  # noqa: F811
    tiny_model_dir,
    data_folder,  # noqa: F811
    tmp_path,
    monkeypatch,
    capfd,
    caplog,
):
    from huggingface_hub import HfApi

    monkeypatch.delenv("HF_TOKEN")  # the flag is the only token: a command that ignored it would be refused
    token = ["--hub_token", TOKEN]
    # train, with transformers' pushes at every save ("Training in progress") and the final one
    out = tmp_path / "train"
    options = "--max_steps 2 --save_steps 1 --push_to_hub --hub_model_id tester/secret-train"
    assert main([*argv("train", tiny_model_dir, data_folder, out, options), *token]) == 0
    titles = [c.title for c in HfApi(token=TOKEN).list_repo_commits("tester/secret-train")]
    assert any(title.startswith("Training in progress") for title in titles), titles
    # iterate, generate and push: the same flag
    run = tmp_path / "iterate"
    iterate = (
        f"--model_name_or_path {tiny_model_dir} --output_dir {run} --rounds 1 --num_prompts 2 --batch_size 2 "
        "--max_completion_length 4 --drop_revealing false --max_steps 1 --per_device_train_batch_size 2 "
        "--report_to none --round_signal false --gradient_checkpointing false --dataloader_pin_memory false "
        "--push_to_hub --hub_model_id tester/secret-online --hub_dataset_id tester/secret-rounds"
    )
    assert main(["iterate", *iterate.split(), *token]) == 0
    generated = tmp_path / "generated"
    generate = (
        f"--model_name_or_path {tiny_model_dir} --output_dir {generated} --num_prompts 2 --max_completion_length 4 "
    )
    generate += "--push_to_hub --hub_dataset_id tester/secret-generated"
    assert main(["generate", *generate.split(), *token]) == 0
    assert main(["push", str(out), "--repo_id", "tester/secret-pushed", *token]) == 0
    api = HfApi(token=TOKEN)
    for repo, kind in [
        ("tester/secret-train", "model"),
        ("tester/secret-online", "model"),
        ("tester/secret-rounds", "dataset"),
        ("tester/secret-generated", "dataset"),
        ("tester/secret-pushed", "model"),
    ]:
        assert api.list_repo_files(repo, repo_type=kind), repo
    # every blob ever uploaded (the server keeps each content once, whatever commit it belongs to)
    assert files_holding(hub.root, TOKEN.encode()) == []
    assert files_holding(tmp_path, TOKEN.encode()) == []  # local folders, checkpoints' training_args.bin included
    printed = capfd.readouterr()
    assert TOKEN not in printed.out + printed.err + caplog.text
