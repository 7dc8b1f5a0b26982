"""The project frame: the README's commands match CI, light imports stay light, the card templates ship."""

import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_the_run_and_test_commands_and_ci_runs_the_latter():
    run_command, test_command = readme_commands()[:2]
    assert "trl-sso iterate --config recipes/quickstart_cpu.yaml" in run_command and "pytest" in test_command
    for command in (run_command, test_command):
        assert command.startswith("pip install torch==2.13.0")  # each does its own set-up
        assert 'pip install -c .ci/constraints.txt -e ".[test]"' in command  # from the locked set
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_import_is_light():
    code = "import sys, trl_sso; assert not {'torch', 'trl', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built as a release would build it (hatchling, the build backend)."""
    folder = tmp_path_factory.mktemp("wheel")
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
            str(folder),
            str(ROOT),
        ],
        check=True,
    )
    (path,) = folder.glob("trl_sso-*.whl")
    return path


def test_the_wheel_holds_the_package_and_its_resources(wheel):
    """What the wheel holds: the package, its packaged files in one home (`trl_sso/resources/`: the prompt sets and
    the card templates), no tests; its `offline` extra carries what the offline default model needs."""
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (ROOT / "cards").glob("*.md"):
        assert f"trl_sso/resources/cards/{template.name}" in names
    for prompts in ("default_prompts", "eval_prompts"):
        assert f"trl_sso/resources/{prompts}.jsonl" in names
    assert {"trl_sso/__init__.py", "trl_sso/cli/table.py", "trl_sso/names.py"} <= names
    assert not any(name.startswith(("tests/", "recipes/")) or name.startswith("trl_sso/cards/") for name in names)
    from trl_sso.cards import template_path

    assert template_path("sso_model_card.md").is_file()
    (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
    metadata = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Provides-Extra: offline" in metadata and "gguf>=0.17; extra == 'offline'" in metadata


@pytest.mark.slow
def test_the_installed_wheel_runs_from_outside_the_repository(wheel, tmp_path, packaged_model):
    """The wheel installed in a fresh virtual environment generates from the packaged model in a folder outside the
    repository. That environment sees the packages of the interpreter running the suite (torch and the rest), whether
    it is a system Python or a virtual environment, through a `.pth` file that lists its site-packages folders
    (`venv --system-site-packages` would expose the base interpreter's instead, which inside a virtual environment
    lack them). Folders listed in a `.pth` file are appended to `sys.path` without reading their own `.pth` files,
    so the repository's editable install stays out of sight."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    )
    paths = sysconfig.get_paths()
    running = dict.fromkeys([*site.getsitepackages(), paths["purelib"], paths["platlib"]])
    (Path(own.stdout.strip()) / "running_suite.pth").write_text("\n".join(running) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    where = subprocess.run(
        [python, "-c", "import trl_sso; print(trl_sso.__file__)"], cwd=tmp_path, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed wheel, not the repository
    command = [venv / "bin" / "trl-sso", "generate", "--output_dir", "data", "--num_prompts", "2", "--batch_size", "2"]
    command += ["--max_completion_length", "4", "--drop_revealing", "false", "--min_response_chars", "0"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "data" / "summary.json").is_file()
