"""The project frame: the README's commands match CI, light imports stay light, the card templates ship."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib


ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_the_run_and_test_commands_and_ci_runs_the_latter():
    run_command, test_command = readme_commands()[:2]
    assert "trl-sso iterate --config recipes/quickstart_cpu.yaml" in run_command and "pytest" in test_command
    for command in (run_command, test_command):
        assert command.startswith("pip install torch==2.13.0")  # each does its own set-up
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_import_is_light():
    code = "import sys, trl_sso; assert not {'torch', 'trl', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_card_templates_ship_in_the_wheel():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]["cards"] == "trl_sso/cards"
    from trl_sso.cards import template_path

    assert template_path("sso_model_card.md").is_file()
