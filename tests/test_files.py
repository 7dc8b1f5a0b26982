"""Atomic writes: an interrupted save leaves the old file or folder, never a part of the new one, and no staging
folder behind; and the one rule for telling a Hub id from a local path."""

import json

import pytest

from trl_sso.cards import hub_id
from trl_sso.files import save_folder_atomic, write_json_atomic


def test_save_folder_atomic_replaces_only_complete_folders(tmp_path):
    target = tmp_path / "dataset"

    def save(text):
        def write(folder):
            (folder / "part-1").write_text(text)
            if text == "crash":
                raise KeyboardInterrupt  # killed in the middle of the save
            (folder / "part-2").write_text(text)

        return write

    save_folder_atomic(target, save("old"))
    with pytest.raises(KeyboardInterrupt):
        save_folder_atomic(target, save("crash"))
    assert (
        sorted(p.name for p in target.iterdir()) == ["part-1", "part-2"] and (target / "part-1").read_text() == "old"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # no staging folder left
    save_folder_atomic(target, save("new"), replace=False)  # another copy finished first: it stays
    assert (target / "part-1").read_text() == "old"
    save_folder_atomic(target, save("new"))
    assert (target / "part-2").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_leftovers_of_a_killed_save_are_cleared_before_the_next_one(tmp_path):
    (tmp_path / ".dataset.abc123.tmp").mkdir()  # a staging folder left by a process killed mid-save
    (tmp_path / ".dataset.abc123.tmp" / "part-1").write_text("stale")
    (tmp_path / ".summary.json.x1.tmp").write_text("{")  # a half-written JSON file
    (tmp_path / ".other.abc.tmp").mkdir()  # another target's: left alone
    save_folder_atomic(tmp_path / "dataset", lambda folder: (folder / "part-1").write_text("new"))
    write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmp", "dataset", "summary.json"]
    (tmp_path / ".dataset.def456.tmp").mkdir()
    save_folder_atomic(tmp_path / "dataset", lambda folder: None, replace=False)  # concurrent writers: not touched
    assert (tmp_path / ".dataset.def456.tmp").is_dir()


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2}, indent=2)
    assert json.loads(path.read_text()) == {"a": 2} and [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_hub_id_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local-model").mkdir()
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("gpt2") == "gpt2"
    for local in ("local-model", "org/model", str(tmp_path), "./x", "../x", "~/models/x", "a/b/c", "", None):
        assert hub_id(local) is None, local
