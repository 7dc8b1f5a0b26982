"""`--accelerate_config` (a name or a file) launches a training command through `accelerate launch`, as `trl dpo` does:
TRL's shipped names resolve to its config files, a bad name is a one-line error, and a real launch on 2 CPU processes
trains with both."""

import json
from pathlib import Path

import yaml
from conftest import argv, data_folder, free_port  # noqa: F401  (a fixture)

from trl_sso.cli.main import main


ROOT = Path(__file__).resolve().parents[1]


def test_a_name_of_trls_configs_launches_this_command_as_a_module(monkeypatch):
    import accelerate.commands.launch as accelerate_launch

    launched = []
    monkeypatch.setattr(accelerate_launch, "launch_command", launched.append)
    assert main(["train", "--max_steps", "3", "--accelerate_config", "zero3", "--bf16", "false"]) == 0
    (args,) = launched
    assert Path(args.config_file).parts[-2:] == ("accelerate_configs", "zero3.yaml")
    assert args.module and args.training_script == "trl_sso.cli.main"
    assert args.training_script_args == ["train", "--max_steps", "3", "--bf16", "false"]


def test_an_unknown_config_name_is_one_line(capsys):
    assert main(["iterate", "--accelerate_config", "zero9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trl-sso iterate: error: Accelerate config zero9 is neither a file") and err.count("\n") == 1


def test_a_config_file_launches_two_processes(tiny_model_dir, data_folder, tmp_path):  # noqa: F811
    config = yaml.safe_load((ROOT / "recipes" / "accelerate_configs" / "multi_cpu.yaml").read_text())
    config["main_process_port"] = free_port()
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    command = argv("train", tiny_model_dir, data_folder, out, "--max_steps 1 --save_strategy no")
    assert main([*command, "--accelerate_config", str(path)]) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    # 8 records, 2 per process and step: one step is half an epoch with 2 processes (a quarter with one)
    assert history[-1]["epoch"] == 0.5
