"""Bad input is refused at the boundary, before any model loads, in one line naming the option, the file or the path
and the fix (exit code 2): values out of range or not finite, on the command line and in YAML alike; YAML values of
the wrong type; malformed `datasets:` mixtures; options of another command; reward models without a trained head;
unknown features; output folders that cannot be written; a full disk while saving."""

import errno
import json
import subprocess

import pytest
from conftest import argv

from trl_sso.cli.main import main


def run(arguments, capsys):
    try:
        code = main(arguments)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"trl-sso {arguments[0]}: error: ")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err  # one line (progress lines aside)
    return errors[0]


# (command and flags, fragment of the one-line error); every case runs with an `--output_dir` that must stay absent
OUT_OF_RANGE = [
    ("generate --temperature 0", "`temperature` must be in (0, 2], got 0"),
    ("generate --temperature 5", "`temperature` must be in (0, 2], got 5"),
    ("generate --temperature nan", "`temperature` must be a finite number, got nan"),
    ("generate --original_temperature inf", "`original_temperature` must be a finite number"),
    ("generate --top_p 1.5", "`top_p` must be in (0, 1], got 1.5"),
    ("generate --top_p 0", "`top_p` must be in (0, 1], got 0"),
    ("generate --top_p=-inf", "`top_p` must be a finite number"),
    ("generate --concision_prob -0.1", "`concision_prob` must be in [0, 1]"),
    ("generate --num_prompts 0", "`num_prompts` must be at least 1, got 0"),
    ("generate --iteration 0", "`iteration` must be at least 1"),
    ("iterate --top_p 2", "`top_p` must be in (0, 1]"),
    ("iterate --rounds 0", "`rounds` must be at least 1"),
    ("iterate --eval_max_completion_length 0", "`eval_max_completion_length` must be at least 1"),
    ("pipeline --policy_num_prompts 0", "`policy_num_prompts` must be at least 1"),
    ("evaluate --temperature -1", "`temperature` must be in [0, 2], got -1"),
    ("evaluate --temperature nan", "`temperature` must be a finite number"),
    ("train --beta 0", "`beta` must be above 0"),
    ("train --learning_rate nan", "`learning_rate` must be a finite number"),
    ("train --sso_steer_coef -1", "`sso_steer_coef` must be at least 0, got -1. Use 0 to turn the term off."),
    ("train --num_train_epochs inf", "`num_train_epochs` must be a finite number"),
    ("reward --eval_split_ratio 1", "`eval_split_ratio` must be in (0, 1), got 1"),
    ("inspect data --num_records 0", "`num_records` must be at least 1"),
    # options of another command
    ("iterate --policy_num_prompts 3", "`--policy_num_prompts` is an option of `trl-sso pipeline`, not of `trl-sso "),
    ("pipeline --rounds 2", "`--rounds` is an option of `trl-sso iterate`, not of `trl-sso pipeline`"),
    ("pipeline --round_signal false", "`--round_signal` is an option of `trl-sso iterate`"),
    ("train --no_such_option 1", "unrecognized arguments: --no_such_option 1"),
    ("generate --hub_model_id me/model", "unrecognized arguments: --hub_model_id me/model"),
]


@pytest.mark.parametrize("flags,fragment", OUT_OF_RANGE, ids=[flags for flags, _ in OUT_OF_RANGE])
def test_out_of_range_and_foreign_options(flags, fragment, tiny_model_dir, tmp_path, capsys):
    command, *rest = flags.split()
    model = [] if command in ("inspect", "evaluate") else ["--model_name_or_path", tiny_model_dir]
    if command in ("train", "reward"):
        model += ["--dataset_name", str(tmp_path)]
    out = tmp_path / "out"
    assert fragment in run([command, *rest, *model, "--output_dir", str(out)], capsys)
    assert not out.exists()  # refused before anything was written (or any model loaded)


YAML = [
    ("generate", "temperature: [0.7, 0.8]", "`temperature` in {config} must be a number, got [0.7, 0.8]"),
    ("generate", "num_prompts: 2.5", "`num_prompts` in {config} must be a whole number, got 2.5"),
    ("generate", "drop_revealing: maybe", "`drop_revealing` in {config} must be true or false, got 'maybe'"),
    ("generate", "features: {Brevity: 1}", "`features` in {config} must be a list"),
    ("generate", "backend: tgi", "`backend` in {config} must be one of ['transformers', 'vllm'], got 'tgi'"),
    ("generate", "top_p: 2", "`top_p` must be in (0, 1], got 2"),
    ("generate", "temperature: .nan", "`temperature` must be a finite number"),
    ("iterate", "rounds: three", "`rounds` in {config} must be a whole number, got 'three'"),
    (
        "iterate",
        "policy_num_prompts: 3",
        "unknown option(s) ['policy_num_prompts'] (`policy_num_prompts` belongs to `trl-sso pipeline`)",
    ),
    ("train", "max_stpes: 3", "unknown option(s) ['max_stpes']; remove them or check their spelling"),
    ("train", "learning_rate: [0.1]", "`learning_rate` in {config} must be a number, got [0.1]"),
    ("train", "max_steps: ten", "`max_steps` in {config} must be a whole number, got 'ten'"),
    ("train", "bf16: 3", "`bf16` in {config} must be true or false, got 3"),
    ("train", "sso_weight_alpha: {a: 1}", "`sso_weight_alpha` in {config} must be a number"),
    ("train", "datasets: some/dataset", "`datasets` in {config} must be a list of datasets"),
    ("train", "datasets: [3]", "`datasets` entry 0 in {config} must be a mapping with a `path`, got 3"),
    ("train", "datasets: [{name: x}]", "`datasets` entry 0 in {config} must be a mapping with a `path`"),
    ("train", "datasets: [{path: a/b, spilt: train}]", "`datasets` entry 0 in {config} has unknown key(s) ['spilt']"),
    ("reward", "eval_split_ratio: yes", "`eval_split_ratio` in {config} must be a number, got True"),
]


@pytest.mark.parametrize("command,yaml,fragment", YAML, ids=[f"{c}: {y}" for c, y, _ in YAML])
def test_yaml_values_get_the_types_and_rules_of_the_command_line(command, yaml, fragment, tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml + "\n")
    out = tmp_path / "out"
    err = run([command, "--config", str(config), "--output_dir", str(out)], capsys)
    assert fragment.format(config=config) in err
    assert not out.exists()


def test_yaml_numbers_written_as_strings_are_read_as_numbers(tmp_path):
    from trl_sso.cli.commands import parse

    config = tmp_path / "recipe.yaml"
    config.write_text("learning_rate: 1e-5\nmax_steps: '3'\nlora_target_modules: q_proj\n")  # YAML reads 1e-5 as text
    _, args, model, _ = parse("train", ["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert (args.learning_rate, args.max_steps, model.lora_target_modules) == (1e-5, 3, "q_proj")  # TRL's one
    config.write_text("temperature: 1\ntop_p: '0.5'\n")
    gen, _ = parse("generate", ["--config", str(config)])
    assert (gen.temperature, gen.top_p) == (1.0, 0.5)


def test_output_folders_that_cannot_be_written(tiny_model_dir, tmp_path, capsys, monkeypatch):
    model = ["--model_name_or_path", tiny_model_dir]
    file = tmp_path / "a-file"
    file.write_text("x")
    assert "`--output_dir" in run(["generate", *model, "--output_dir", str(file)], capsys)
    assert "is a file, not a folder" in run(["generate", *model, "--output_dir", str(file / "sub")], capsys)
    locked = tmp_path / "locked"
    locked.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0
    if not immutable:  # no chattr here (or no right to use it): the same check, through `os.access`
        import os

        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real(path, mode))
    try:
        err = run(["iterate", *model, "--output_dir", str(locked / "run")], capsys)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert f"{locked} is read-only" in err and "Choose a writable `--output_dir`" in err


def test_a_file_in_the_way_inside_the_output_folder(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "round_1").write_text("not a folder")
    options = "--rounds 1 --num_prompts 2 --batch_size 2 --max_completion_length 4 --max_steps 1 --report_to none"
    err = run(
        ["iterate", "--model_name_or_path", tiny_model_dir, "--output_dir", str(run_dir), *options.split()], capsys
    )
    assert "round_1" in err and "is in the way" in err and "Remove it or choose another `--output_dir`" in err


def test_a_full_disk_while_saving_leaves_no_partial_model(tiny_model_dir, data_folder, tmp_path, capsys, monkeypatch):  # noqa: F811
    import transformers.modeling_utils
    from safetensors import SafetensorError

    save = transformers.modeling_utils.safe_save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if "checkpoint-" in str(filename):
            return save(tensors, filename, *args, **kwargs)
        open(filename, "wb").write(b"\0" * 16)  # what a write cut short leaves
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, message: "No space left on device" })')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    out = tmp_path / "out"
    options = argv("train", tiny_model_dir, data_folder, out, "--max_steps 1 --save_steps 1")
    assert "the disk is full while saving a model" in run(options, capsys)
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save)
    assert main(options) == 0  # the same command finishes from the last checkpoint, without training further
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1


def test_a_full_disk_while_writing_a_file(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import os

    import trl_sso.files

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[-1]))

    monkeypatch.setattr(trl_sso.files.os, "replace", full)
    out = tmp_path / "out"
    err = run(["generate", "--model_name_or_path", tiny_model_dir, "--output_dir", str(out), "--num_prompts", "2",
               "--max_completion_length", "4"], capsys)  # fmt: skip
    assert "the disk is full while writing" in err and str(out) in err and "run the same command again" in err


def test_reward_models_without_a_trained_head_are_refused(tiny_model_dir, data_folder, tmp_path, capsys):  # noqa: F811
    # a causal LM: its score head would be random
    err = run(["evaluate", "--model", tiny_model_dir, "--reward_model", tiny_model_dir, "--output_dir",
               str(tmp_path / "e")], capsys)  # fmt: skip
    assert "has no trained score head" in err and "`--reward_model`" in err
    err = run(["inspect", data_folder, "--skip_onpolicy", "--reward_model", tiny_model_dir], capsys)
    assert "has no trained score head" in err


def test_data_naming_an_unknown_feature_is_refused(data_folder, tmp_path, capsys):  # noqa: F811
    from datasets import load_dataset

    rows = load_dataset(data_folder, split="train").to_list()
    rows[1]["features"] = ["Brevity", "Sparkle"]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    err = run(["inspect", str(path), "--skip_onpolicy", "--output_dir", str(tmp_path / "s")], capsys)
    assert "Record 1" in err and "['Sparkle']" in err and "--features_file" in err


def test_summaries_are_strict_json(tmp_path):
    from trl_sso.files import write_json_atomic

    write_json_atomic(tmp_path / "summary.json", {"loss": float("nan"), "rates": [float("inf"), 0.5]})
    text = (tmp_path / "summary.json").read_text()

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(text, parse_constant=refuse) == {"loss": None, "rates": [None, 0.5]}
