"""`--accelerate_config` (a name or a file) launches a training command through `accelerate launch`, as `trl dpo` does:
TRL's shipped names resolve to its config files, a bad name is a one-line error, and a real launch on 2 CPU processes
trains with both, without third-party noise."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import argv, data_folder, free_port  # noqa: F401  (a fixture)

from trl_sso.cli.main import main


ROOT = Path(__file__).resolve().parents[1]
# bitsandbytes' kernel fetch (and `kernels`' offline note about it), DeepSpeed's CPU detection, transformers' renames
NOISE = ("kernels-community", "publisher trust", "Setting accelerator to CPU", "deprecated and will be removed in v6")


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


@pytest.mark.slow  # end-to-end (several processes, or whole command runs): outside the fast subset
def test_a_config_file_launches_two_processes_quietly(tiny_model_dir, data_folder, tmp_path):  # noqa: F811
    """Two processes from a config file; their output carries no known third-party noise (`trl_sso.quiet`: the
    missing-kernels message of bitsandbytes, DeepSpeed's CPU detection, the `gradient_checkpointing` rename, here
    with checkpointing on), and trl-sso's own warnings still show."""
    config = yaml.safe_load((ROOT / "recipes" / "accelerate_configs" / "multi_cpu.yaml").read_text())
    config["main_process_port"] = free_port()
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    command = argv("train", tiny_model_dir, data_folder, out, "--max_steps 1 --save_strategy no")
    command += ["--gradient_checkpointing", "true", "--accelerate_config", str(path)]
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    result = subprocess.run(["trl-sso", *command], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    # 8 records, 2 per process and step: one step is half an epoch with 2 processes (a quarter with one)
    assert history[-1]["epoch"] == 0.5
    output = result.stdout + result.stderr
    assert not [noise for noise in NOISE if noise in output], output[-3000:]
    assert "No accelerator with bf16 support was found" in output  # trl-sso's own warning still shows


def test_a_malformed_config_file_is_one_line_naming_the_file_and_the_yaml_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: [MULTI_GPU\nnum_processes: 2\n")
    assert main(["train", "--max_steps", "1", "--accelerate_config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trl-sso train: error: The accelerate config {bad} is not valid YAML (") and "line 3" in err
    assert err.count("\n") == 1
    (tmp_path / "empty.yaml").write_text("just text\n")
    assert main(["train", "--accelerate_config", str(tmp_path / "empty.yaml")]) == 2
    assert "holds no settings" in capsys.readouterr().err
