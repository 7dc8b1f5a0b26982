"""One parser for every command: `--help` of each, `--config` everywhere (generate included), kebab-case aliases,
checked choices, renamed `generate` flags with a deprecation warning, one-line errors with exit code 2, and light
paths that import neither torch nor transformers."""

import json
import os
import subprocess
import sys

import pytest

from trl_sso.cli.commands import parser
from trl_sso.cli.main import COMMANDS, main
from trl_sso.generation.arguments import GenerateArguments, GenerationOptions


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: trl-sso {command}") and "--config FILE.yaml" in text
    expected = {
        "generate": "--model_name_or_path",
        "train": "--sso_steer_coef",
        "reward": "--use_steering_pairs",
        "iterate": "--rounds",
        "online": "--steps_per_generation",
        "pipeline": "--policy_num_prompts",
        "push": "--repo_id",
        "inspect": "--reward_model",
        "evaluate": "--max_completion_length",
        "calibrate": "--placements",
        "env": "bug report",
    }[command]
    assert expected in text


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(command in text for command in COMMANDS)


def test_unknown_command_is_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--help"], *([command, "--help"] for command in ("generate", "push", "inspect", "evaluate"))],
    ids=" ".join,
)
def test_light_paths_import_neither_torch_nor_transformers(argv):
    code = (
        "import sys, contextlib, io\n"
        "from trl_sso.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_generate_reads_a_yaml_config_and_flags_override_it(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text(
        "model_name_or_path: some/model\nnum_prompts: 5\nmax_completion_length: 3\nfeatures: [Accuracy, Safety]\n"
        "drop_revealing: false\nenv:\n  TRL_SSO_TEST_VARIABLE: set\n"
    )
    gen, publish, _ = parser("generate").parse_args_and_config(["--config", str(config), "--num-prompts", "7"])
    assert isinstance(gen, GenerateArguments) and gen.model_name_or_path == "some/model"
    assert (gen.num_prompts, gen.max_completion_length, gen.features, gen.drop_revealing) == (
        7,
        3,
        ["Accuracy", "Safety"],
        False,
    )
    assert os.environ.pop("TRL_SSO_TEST_VARIABLE") == "set" and publish.push_to_hub is False


def test_generate_end_to_end_from_a_config_file(tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "gen.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\noutput_dir: {tmp_path / 'data'}\nnum_prompts: 2\n"
        "batch_size: 2\nmax_completion_length: 4\ndrop_revealing: false\nmin_response_chars: 0\n"
    )
    assert main(["generate", "--config", str(config)]) == 0
    assert "SSO records from 2 prompts" in capsys.readouterr().out
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    # Reports name local models and files by their last part only (a local path says nothing to a reader)
    assert summary["settings"]["model_name_or_path"] == os.path.basename(tiny_model_dir)
    assert summary["generator_model"] == os.path.basename(tiny_model_dir)


def test_kebab_case_and_boolean_forms():
    parse = parser("generate").parse_args_and_config
    (a, _, _), (b, _, _) = (
        parse(["--max_completion_length", "9", "--drop_revealing", "false"]),
        parse(["--max-completion-length", "9", "--no-drop-revealing"]),
    )
    assert a == b and a.max_completion_length == 9 and a.drop_revealing is False
    (c, _, _) = parse(["--drop_truncated"])
    assert c.drop_truncated is True


def test_light_parser_reads_options_as_trl_parser_does():
    from trl_sso.cli.parser import DataclassParser, trl_parser

    for argv in (
        [],
        ["--num_prompts", "3", "--features", "Accuracy", "Safety", "--drop_revealing", "no"],
        ["--temperature", "0.3", "--logprob-filter", "--principle_source", "policy", "--no_drop_revealing"],
    ):
        ours = DataclassParser((GenerationOptions,)).parse_args_and_config(argv)
        theirs = trl_parser((GenerationOptions,)).parse_args_and_config(
            args=argv
        )  # TRL's, trl-sso's metadata left out
        assert ours == theirs, argv


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["generate", "--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
        (["generate", "--num_prompts", "many"], "argument --num_prompts/--num-prompts: invalid int value: 'many'"),
        (["generate", "--drop_revealing", "maybe"], "expected a boolean"),
        (["generate", "--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
        (["generate", "--backend", "tgi"], "invalid choice: 'tgi'"),
        (["generate", "--push_to_hub"], "`--push_to_hub` needs `--hub_dataset_id`"),
        (["push", "--repo_id", "me/x"], "the following arguments are required: path"),
        (["train", "--sso_objective", "judge"], "invalid choice: 'judge' (choose from 'policy', 'generator')"),
        (["train", "--sso_weight_alpha", "2"], "`sso_weight_alpha` must be in [0, 1]"),
        (["train", "--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
    ],
)
def test_bad_values_are_one_line_and_exit_code_2(argv, fragment, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_unknown_key_in_a_config_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("num_prompts: 2\nnum_promts: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        parser("generate").parse_args_and_config(["--config", str(config)])
    assert exit_info.value.code == 2 and "unknown option(s) ['num_promts']" in capsys.readouterr().err
    config.write_text("- a list\n")
    with pytest.raises(SystemExit):
        parser("generate").parse_args_and_config(["--config", str(config)])
    assert "must hold a YAML mapping" in capsys.readouterr().err


def test_renamed_generate_flags_still_work_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match="`--model` is deprecated.*use `--model_name_or_path`"):
        gen, _, _ = parser("generate").parse_args_and_config(["--model", "a/b"])
    assert gen.model_name_or_path == "a/b"
    with pytest.warns(FutureWarning, match="--hub_private"):
        _, publish, _ = parser("generate").parse_args_and_config(["--hub_private=true", "--hub_dataset_id", "me/d"])
    assert publish.hub_private_repo is True
    config = tmp_path / "old.yaml"
    config.write_text("model: c/d\n")
    with pytest.warns(FutureWarning, match="`model:` is deprecated"):
        gen, _, _ = parser("generate").parse_args_and_config(["--config", str(config)])
    assert gen.model_name_or_path == "c/d"


def test_push_takes_its_path_from_a_config_file(tmp_path):
    config = tmp_path / "push.yaml"
    config.write_text("path: outputs/round_1\nrepo_id: me/data\nprivate: true\n")
    (args, _) = parser("push").parse_args_and_config(["--config", str(config)])
    assert (args.path, args.repo_id, args.private) == ("outputs/round_1", "me/data", True)


def test_version_and_env(capsys):
    from trl_sso import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"trl-sso {__version__}"
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for package in (
        "trl-sso",
        "trl",
        "transformers",
        "datasets",
        "huggingface_hub",
        "peft",
        "accelerate",
        "bitsandbytes",
        "torch",
        "vllm",
    ):
        assert any(line.startswith(f"- {package} version: ") for line in lines), package
    assert any(line.startswith("- Accelerator: ") for line in lines)


def test_log_level_sets_trl_sso_loggers(monkeypatch):
    import logging

    from trl_sso.logs import configure_logging

    logger = logging.getLogger("trl_sso")
    configure_logging()  # the command's default: progress lines at INFO on the main process
    assert logger.level == logging.INFO
    configure_logging("warning")
    configure_logging("error")
    assert logger.level == logging.ERROR and sum(getattr(h, "trl_sso", False) for h in logger.handlers) == 1
    configure_logging("passive")  # TRL's default `--log_level`: ours then stays at INFO
    assert logger.level == logging.INFO
    monkeypatch.setenv("RANK", "1")  # other processes: WARNING unless `--log_level_replica` says otherwise
    configure_logging("info", None)
    assert logger.level == logging.WARNING
    configure_logging("info", "debug")
    assert logger.level == logging.DEBUG
    (_, _, logging_args) = parser("generate").parse_args_and_config(["--log_level", "warning"])
    assert logging_args.log_level == "warning"


@pytest.mark.parametrize("command", ["generate", "iterate"])
def test_the_generators_old_names_still_work_with_a_deprecation_warning(command):
    """0.1.0's `--backend` and `--max_new_tokens` became TRL's `--use_vllm` and `--max_completion_length`; the old
    names keep working until 0.2, with a warning that names the new ones."""
    with pytest.warns(FutureWarning) as caught:
        parsed = parser(command).parse_args_and_config(["--backend", "vllm", "--max_new_tokens", "9"])
    options = next(p for p in parsed if hasattr(p, "use_vllm"))
    assert options.use_vllm is True and options.max_completion_length == 9
    assert options.backend is None and options.max_new_tokens is None
    text = " ".join(str(w.message) for w in caught)
    assert "use `use_vllm=True`" in text and "use `max_completion_length`" in text


@pytest.mark.parametrize("command", ["generate", "iterate"])
def test_generation_kwargs_is_a_json_object(command, capsys):
    parsed = parser(command).parse_args_and_config(["--generation_kwargs", '{"repetition_penalty": 1.1}'])
    options = next(p for p in parsed if hasattr(p, "use_vllm"))
    assert options.generation_kwargs == {"repetition_penalty": 1.1}
    assert main([command, "--generation_kwargs", "[1, 2]"]) == 2
    assert "`generation_kwargs` must be a JSON object" in capsys.readouterr().err
