"""One declaration per option: the sampling, principle and filter options are declared once
(`trl_sso.generation.arguments`) and every command that samples takes them under the same name, default, help and
range; a new sampling option is one field."""

import dataclasses
import warnings

import pytest

from trl_sso.cli.commands import parse
from trl_sso.generation.arguments import GenerateArguments, GenerationOptions, SamplingOptions, TripleOptions
from trl_sso.generation.generator import _settings
from trl_sso.online_config import OnlineSSOConfig
from trl_sso.scripts.calibrate import CalibrateArguments
from trl_sso.scripts.evaluate import EvaluateArguments


SAMPLING = [f.name for f in dataclasses.fields(SamplingOptions)]
TRIPLES = [f.name for f in dataclasses.fields(TripleOptions)]
# the one-line overrides and their reasons live beside the overriding field
OVERRIDDEN = {
    (OnlineSSOConfig, "max_completion_length"): 128,
    (CalibrateArguments, "max_completion_length"): 64,
    (EvaluateArguments, "max_completion_length"): 128,
    (EvaluateArguments, "temperature"): 0.0,
}


@pytest.mark.parametrize("cls", [GenerateArguments, OnlineSSOConfig, CalibrateArguments, EvaluateArguments])
def test_every_sampling_command_inherits_the_one_declaration(cls):
    own = {f.name: f for f in dataclasses.fields(cls)}
    names = SAMPLING + (TRIPLES if cls in (GenerateArguments, OnlineSSOConfig) else [])
    for name in names:
        declared = (SamplingOptions if name in SAMPLING else TripleOptions).__dataclass_fields__[name]
        assert own[name].metadata["help"] == declared.metadata["help"], (cls.__name__, name)
        assert own[name].default == OVERRIDDEN.get((cls, name), declared.default), (cls.__name__, name)


def test_a_new_sampling_option_is_one_field_that_reaches_every_sampler(tmp_path, monkeypatch):
    """`repetition_penalty` is declared once, as a `sampling_kwarg`: every command's parser takes it, and it reaches
    the sampler (transformers' `generate` keyword, or vLLM's `SamplingParams`) through `sampling_kwargs`."""
    monkeypatch.chdir(tmp_path)
    for command, extra in (
        ("generate", []),
        ("iterate", []),
        ("calibrate", []),
        ("evaluate", []),
        ("online", ["--output_dir", "out", "--dataset_name", "prompts.jsonl", "--report_to", "none"]),
    ):
        parsed = parse(command, ["--repetition_penalty", "1.3", *extra])
        sampling = [p for p in parsed if isinstance(p, SamplingOptions)]
        assert sampling, command
        assert sampling[0].sampling_kwargs() == {"repetition_penalty": 1.3}, command
        if isinstance(sampling[0], OnlineSSOConfig):
            assert sampling[0].generation_options().sampling_kwargs() == {"repetition_penalty": 1.3}
    # the user's `generation_kwargs` win over the option, as TRL's trainers let them
    options = GenerationOptions(repetition_penalty=1.3, generation_kwargs='{"repetition_penalty": 1.1, "top_k": 5}')
    assert options.sampling_kwargs() == {"repetition_penalty": 1.1, "top_k": 5}
    assert GenerationOptions().sampling_kwargs() == {}  # at its default, nothing is passed
    with pytest.raises(ValueError, match="`repetition_penalty` must be above 0"):
        GenerationOptions(repetition_penalty=0.0)


def test_transformers_sampler_passes_the_sampling_kwargs_to_generate(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sso.generation.samplers import TransformersSampler

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = {}
    original = model.generate

    def generate(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    model.generate = generate
    sampler = TransformersSampler(model, tokenizer, 2, GenerationOptions(repetition_penalty=1.3).sampling_kwargs())
    sampler.sample([[{"role": "user", "content": "Hi"}]], 0.7, 0.8, 3, seed=0)
    assert seen["repetition_penalty"] == 1.3 and seen["max_new_tokens"] == 3


def test_the_resume_key_follows_the_metadata():
    """A sampling option changes the data, so it changes the generator's resume key; where vLLM runs and how long
    the judge may take do not (`affects_data: False`), nor do the deprecated spellings."""
    base = _settings(GenerateArguments())
    assert "repetition_penalty" in base and "output_dir" not in base and "vllm_server_timeout" not in base
    assert "max_new_tokens" not in base and "judge_timeout" not in base
    assert _settings(GenerateArguments(repetition_penalty=1.2)) != base
    assert _settings(GenerateArguments(vllm_server_timeout=10.0, output_dir="elsewhere")) == base


def test_errors_name_the_option_as_the_user_spells_it(tmp_path):
    with pytest.raises(ValueError, match="`num_features` must be at least 1"):
        OnlineSSOConfig(str(tmp_path), num_features=0, report_to="none")
    with pytest.raises(ValueError, match="`temperature` must be in \\(0, 2\\]"):
        OnlineSSOConfig(str(tmp_path), temperature=0.0, report_to="none")
    assert EvaluateArguments(temperature=0.0).temperature == 0.0  # greedy: evaluate's own range


def test_old_online_spellings_still_work_until_0_2(tmp_path):
    with pytest.warns(FutureWarning, match="`sso_features` is deprecated .* use `features`"):
        config = OnlineSSOConfig(str(tmp_path), sso_features=["Brevity"], sso_num_features=1, report_to="none")
    assert config.features == ["Brevity"] and config.num_features == 1 and config.sso_features is None
    with pytest.raises(ValueError, match="`sso_num_features` is the old name of `num_features`, and both are set"):
        OnlineSSOConfig(str(tmp_path), sso_num_features=1, num_features=3, report_to="none")
    with pytest.warns(FutureWarning, match="use `principle_placement`"):
        config = OnlineSSOConfig(str(tmp_path), sso_principle_placement="system", report_to="none")
    assert config.principle_placement == "system"
    with pytest.raises(ValueError, match="differs from `principle_placement='before_question'`"):
        OnlineSSOConfig(
            str(tmp_path), sso_principle_placement="system", principle_placement="before_question", report_to="none"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*trl-sso 0.2", FutureWarning)  # the new spellings warn of nothing
        OnlineSSOConfig(str(tmp_path), features=["Brevity"], principle_placement="system", report_to="none")


def test_conflicting_placements_are_refused_at_parse_time(tmp_path):
    """`iterate` takes where generation puts the principle and what training assumes without it: a disagreement is
    found before the generation stage, not at tokenization after it."""
    with pytest.raises(
        ValueError, match="`--principle_placement system` .* `--sso_principle_placement after_question`"
    ):
        parse("iterate", ["--output_dir", str(tmp_path), "--principle_placement", "system",
                          "--sso_principle_placement", "after_question"])  # fmt: skip
    parse("iterate", ["--output_dir", str(tmp_path), "--principle_placement", "system"])


def options_table() -> str:
    """The README's table of the shared options, from their one declaration (`trl_sso.generation.arguments`)."""
    from trl_sso.generation.arguments import GenerationOptions, VLLMOptions

    commands = {  # each command's class of sampling options
        "generate": GenerateArguments,
        "iterate": GenerationOptions,
        "pipeline": GenerationOptions,
        "online": OnlineSSOConfig,
        "calibrate": CalibrateArguments,
        "evaluate": EvaluateArguments,
    }
    takers = {}
    for mixin in (SamplingOptions, TripleOptions, VLLMOptions):
        names = [name for name, cls in commands.items() if issubclass(cls, mixin)]
        takers[mixin] = "all six" if len(names) == len(commands) else ", ".join(names)
    overrides = {}
    for (cls, name), value in OVERRIDDEN.items():
        command = {OnlineSSOConfig: "online", CalibrateArguments: "calibrate", EvaluateArguments: "evaluate"}[cls]
        overrides.setdefault(name, []).append(f"{command}: {value!r}")
    lines = ["| option | default | taken by | what it does |", "|---|---|---|---|"]
    for mixin, commands in takers.items():
        for f in dataclasses.fields(mixin):
            default = repr(f.default) if f.default is not dataclasses.MISSING else "—"
            if f.name in overrides:
                default += f" ({'; '.join(overrides[f.name])})"
            lines.append(f"| `{f.name}` | `{default}` | {commands} | {f.metadata['help'].replace('|', '/')} |")
    return "\n".join(lines)


def test_the_readme_option_table_is_the_declaration():
    """The README lists the shared options as they are declared: regenerate it with `python tests/test_options.py`."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start, end = "<!-- options table: start -->\n", "\n<!-- options table: end -->"
    assert start in readme and end in readme
    assert readme[readme.index(start) + len(start) : readme.index(end)] == options_table()


if __name__ == "__main__":  # rewrite the README's table from the declarations
    from pathlib import Path

    path = Path(__file__).parents[1] / "README.md"
    text = path.read_text()
    start, end = "<!-- options table: start -->\n", "\n<!-- options table: end -->"
    path.write_text(text[: text.index(start) + len(start)] + options_table() + text[text.index(end) :])
