"""A first run's output carries no known third-party noise (`trl_sso.quiet`), and real warnings still show."""

import os
import subprocess

from conftest import argv, data_folder  # noqa: F401  (a fixture)


NOISE = ("kernels-community", "Setting accelerator to CPU", "gradient_checkpointing` is deprecated")


def test_a_training_command_prints_no_known_noise(tiny_model_dir, data_folder, tmp_path):  # noqa: F811
    command = ["trl-sso", *argv("train", tiny_model_dir, data_folder, tmp_path / "out", "--max_steps 1")]
    command += ["--save_strategy", "no", "--gradient_checkpointing", "true"]
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert not [noise for noise in NOISE if noise in output], output[-3000:]
    assert "No accelerator with bf16 support was found" in output  # trl-sso's own warning still shows
