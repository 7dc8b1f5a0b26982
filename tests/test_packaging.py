"""The project frame: the README's commands match CI, light imports stay light, the card templates ship."""

import re
import subprocess
import sys
from pathlib import Path


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


def test_the_wheel_holds_the_package_and_its_resources(tmp_path):
    """Build the wheel as a release would (hatchling, the build backend) and list what it holds: the package, its
    packaged files in one home (`trl_sso/resources/`: the prompt sets and the card templates), no tests."""
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("trl_sso-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (ROOT / "cards").glob("*.md"):
        assert f"trl_sso/resources/cards/{template.name}" in names
    for prompts in ("default_prompts", "eval_prompts"):
        assert f"trl_sso/resources/{prompts}.jsonl" in names
    assert {"trl_sso/__init__.py", "trl_sso/cli/table.py", "trl_sso/names.py"} <= names
    assert not any(name.startswith(("tests/", "recipes/")) or name.startswith("trl_sso/cards/") for name in names)
    from trl_sso.cards import template_path

    assert template_path("sso_model_card.md").is_file()
