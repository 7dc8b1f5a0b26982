"""The generator on real models: resume after a crash and two processes reproduce a single uninterrupted run (tiny
random Llama), and `trl-sso generate` with no model runs the packaged SmolLM2 end to end, its output training an
SSOTrainer step."""

import os
import subprocess
import sys

import pytest
from conftest import accelerate_launch, run_processes, sso_args
from datasets import load_dataset
from numerics import assert_close_to_scale

from trl_sso.generation import GenerateArguments, SSOGenerator, filters
from trl_sso.generation.samplers import TransformersSampler


pytestmark = pytest.mark.slow  # end-to-end: outside the fast subset (`-m "not slow"`)


def tiny_generator(model_dir, output_dir, sampler_wrapper=None, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sampler = TransformersSampler(AutoModelForCausalLM.from_pretrained(model_dir).eval(), tokenizer, batch_size=4)
    if sampler_wrapper:
        sampler = sampler_wrapper(sampler)
    kwargs = dict(
        model_name_or_path=model_dir,
        output_dir=str(output_dir),
        num_prompts=6,
        batch_size=2,
        max_completion_length=8,
        seed=11,
        drop_revealing=False,
    )
    kwargs.update(overrides)
    return SSOGenerator(GenerateArguments(**kwargs), sampler=sampler, tokenizer=tokenizer)


class CrashAfter:
    def __init__(self, sampler, calls):
        self.sampler, self.calls = sampler, calls

    def sample(self, *args, **kwargs):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt  # like a Ctrl-C in the middle of a batch
        return self.sampler.sample(*args, **kwargs)


def test_resume_with_real_sampling_matches_uninterrupted(tiny_model_dir, tmp_path):
    reference, _ = tiny_generator(tiny_model_dir, tmp_path / "ref").run()
    with pytest.raises(KeyboardInterrupt):
        tiny_generator(tiny_model_dir, tmp_path / "run", lambda s: CrashAfter(s, 3)).run()
    resumed, summary = tiny_generator(tiny_model_dir, tmp_path / "run").run()
    assert resumed.to_list() == reference.to_list()
    assert summary["num_prompts"] == 6


def test_two_processes_equal_one(tiny_model_dir, tmp_path):
    options = [
        "generate",
        "--model_name_or_path",
        tiny_model_dir,
        *"--num_prompts 6 --batch_size 2 --max_completion_length 8 --seed 5 --drop_revealing false".split(),
    ]
    run_processes([sys.executable, "-m", "trl_sso.cli.main", *options, "--output_dir", str(tmp_path / "one")], 600)
    launch = [*accelerate_launch(), "-m", "trl_sso.cli.main"]
    double = run_processes([*launch, *options, "--output_dir", str(tmp_path / "two")], 600)
    assert "Wrote" in double.stdout and double.stdout.count("Wrote") == 1  # merged and reported once
    one = load_dataset(str(tmp_path / "one"), split="train").to_list()
    two = load_dataset(str(tmp_path / "two"), split="train").to_list()
    assert one == two and len(one) > 0


def test_cli_end_to_end_with_the_packaged_model(tmp_path, tiny_model_dir, tokenizer):
    out = tmp_path / "sso-data"
    result = subprocess.run(
        ["trl-sso", "generate", "--output_dir", str(out), "--num_prompts", "4", "--max_completion_length", "16"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SSO records from 4 prompts" in result.stdout
    dataset = load_dataset(str(out), split="train")
    assert len(dataset) >= 1 and dataset[0]["generator_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    from trl_sso import SSOTrainer

    trainer = SSOTrainer(
        model=tiny_model_dir,
        args=sso_args(tmp_path / "train", max_steps=1, per_device_train_batch_size=1),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    result = subprocess.run(
        [
            "trl-sso",
            "generate",
            "--prompts",
            str(tmp_path / "missing.csv"),
            "--output_dir",
            str(tmp_path / "o"),
            "--model_name_or_path",
            "unused",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "trl-sso generate: error:" in result.stderr
    assert "missing.csv' does not exist" in result.stderr


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "one-row-per-response"])
def test_mean_logps_match_a_direct_computation(tiny_model_dir, shared, monkeypatch):
    """Each prompt is forwarded once for its responses (shared prompt); for a model that cannot take the mask, each
    response gets a row of its own. Responses are tokenized as the trainer tokenizes them: an assistant turn, with
    its end-of-turn tokens, after the prompt's generation prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sso import sharing

    if not shared:
        monkeypatch.setattr(sharing, "unsupported_reason", lambda model: "a test says so")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    sampler = TransformersSampler(model, tokenizer, batch_size=2)
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "A much longer question here?"}]] * 2
    responses = [["Hello there.", "Yes."], ["Hm"], ["A longer answer, with commas.", "No", "Maybe so."], []]
    got = sampler.mean_logps(prompts, responses)
    assert [len(values) for values in got] == [2, 1, 3, 0]
    expected_values = []
    for prompt, rs in zip(prompts, responses):
        for response in rs:
            turn = [*prompt, {"role": "assistant", "content": response}]
            full_ids = tokenizer(tokenizer.apply_chat_template(turn, tokenize=False), add_special_tokens=False)
            full_ids = full_ids["input_ids"]
            start = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"])
            assert tokenizer.decode(full_ids[start:]).startswith(response)  # the response, then its end of turn
            ids = torch.tensor([full_ids])
            with torch.no_grad():
                logps = torch.log_softmax(reference(ids).logits[0, :-1].float(), -1)
            expected_values.append(logps[start - 1 :].gather(-1, ids[0, start:, None]).mean())
    # token means batched with other responses and padding: 1e-6 of the largest (tests/numerics.py)
    flat = torch.tensor([value for values in got for value in values])
    assert_close_to_scale(flat, torch.stack(expected_values), 1e-6, name="mean log-probs")


def test_logprob_filter_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    """The filter scores each surviving triple with the model and drops exactly the ones `logprob_keep` refuses; a
    random model may refuse them all, and the run then stops with a message that says so."""
    from trl_sso.generation import generator as generator_module
    from trl_sso.generation.generator import NoRecordsError

    verdicts = []

    def recording_keep(scores):
        keep = filters.logprob_keep(scores)
        assert all(set(score) == {f"{p}_{c}" for p in "pon" for c in ("chosen", "rejected")} for score in scores)
        verdicts.extend(keep)
        return keep

    monkeypatch.setattr(generator_module, "logprob_keep", recording_keep)
    try:
        _, summary = tiny_generator(tiny_model_dir, tmp_path, logprob_filter=True, num_prompts=8).run()
    except NoRecordsError as error:
        assert not any(verdicts) and "filtered out" in str(error) and "'logprob'" in str(error)
    else:
        assert summary["dropped"]["logprob"] == verdicts.count(False)
        assert summary["num_records"] == verdicts.count(True) > 0
        assert summary["num_records"] + sum(summary["dropped"].values()) == 8
    assert verdicts  # the filter ran on real scores


def test_generation_kwargs_that_the_sampler_also_sets_take_the_users_value(tiny_model_dir, tmp_path, capsys):
    """`generation_kwargs` may name settings the sampler passes itself (`top_k`, the token limit, ...): the user's
    value wins, in the sampler and through `trl-sso generate`, instead of a `TypeError` from `generate`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sso.cli.main import main

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    user = {"top_k": 50, "max_new_tokens": 3, "use_cache": False}
    sampler = TransformersSampler(model, tokenizer, batch_size=2, generation_kwargs=user)
    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name a colour."}]]
    completions = sampler.sample(chats, temperature=0.7, top_p=0.8, max_new_tokens=16, seed=0)
    assert all(completion.num_tokens <= 3 for completion in completions)

    command = ["generate", "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "out")]
    command += ["--num_prompts", "2", "--batch_size", "2", "--max_completion_length", "8", "--drop_revealing", "false"]
    command += ["--min_response_chars", "0", "--generation_kwargs", '{"top_k": 50}']
    assert main(command) == 0, capsys.readouterr().err[-2000:]
