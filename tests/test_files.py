"""Atomic writes: an interrupted save leaves the old file or folder, never a part of the new one, and no staging
folder behind; and the one rule for telling a Hub id from a local path."""

import json

import pytest

from trl_sso.files import save_folder_atomic, write_json_atomic
from trl_sso.names import hub_id


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


def test_packaged_model_and_adapters_are_named_by_hub_id(tmp_path, monkeypatch):
    """The packaged SmolLM2's cache folder is shown as the Hub model it came from, and an adapter saved from a local
    folder is pointed at its base's Hub id (with the revision), so that it loads from the Hub alone."""
    from trl_sso.cards import model_license
    from trl_sso.hub import point_adapter_at
    from trl_sso.names import public_name

    monkeypatch.setenv("TRL_SSO_CACHE", str(tmp_path / "cache"))
    packaged = tmp_path / "cache" / "SmolLM2-135M-Instruct"
    packaged.mkdir(parents=True)
    assert hub_id(str(packaged)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_license(str(packaged)) == model_license(None) == {"license": "apache-2.0"}
    assert public_name(str(tmp_path / "runs" / "policy")) == "policy"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(packaged), "r": 4}))
    point_adapter_at(adapter, hub_id(str(packaged)))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 4, "revision": None}
    point_adapter_at(adapter, "me/sso-online", "iteration_1")
    assert json.loads((adapter / "adapter_config.json").read_text())["revision"] == "iteration_1"
    point_adapter_at(tmp_path / "runs", "me/x")  # no adapter there: nothing to do


def test_licenses_are_complete_or_left_out(tmp_path):
    from trl_sso.cards import model_license

    cases = {
        "license: mit": {"license": "mit"},
        "license: other": {},  # an `other` license with no name and link is not a license the Hub accepts
        "license: other\nlicense_name: acme\nlicense_link: https://example.com/l": {
            "license": "other",
            "license_name": "acme",
            "license_link": "https://example.com/l",
        },
        "tags: [x]": {},
    }
    for index, (metadata, expected) in enumerate(cases.items()):
        folder = tmp_path / f"model{index}"
        folder.mkdir()
        (folder / "README.md").write_text(f"---\n{metadata}\n---\n\nA model.\n")
        assert model_license(str(folder)) == expected, metadata
    assert model_license(str(tmp_path / "no-card")) == {}


def test_public_names_tell_local_models_apart():
    from trl_sso.names import public_names

    assert public_names(["/runs/a/round_1/policy", "/runs/a/round_2/policy"]) == ["round_1/policy", "round_2/policy"]
    assert public_names(["/x/model", "gpt2", "/x/model"]) == ["model", "gpt2", "model"]
