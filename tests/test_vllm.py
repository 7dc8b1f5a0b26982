"""The vLLM path without a GPU (`use_vllm`; the GPU checks run the real engine: tests/gpu/).

- server mode: `trl-sso iterate` for 2 rounds against a stand-in server on 127.0.0.1 that speaks the vLLM server
  protocol TRL's `VLLMClient` uses, backed by a transformers model (tests/vllm_server.py): the responses come from
  the server, and round 2 samples from round 1's policy, whose weights were pushed through the client; each round's
  A(x, y) is scored by the server;
- colocate mode: the engine's lifecycle over 2 rounds with a stand-in engine that records what is done to it: built
  once from the starting policy, its memory handed back before each training (sleep, or delete), woken with the next
  policy's weights (or built anew from it);
- the vLLM samplers' outputs: end-of-sequence tokens, truncation, and the token-mean log-probabilities of the
  log-probability filter and A(x, y) from the server's prompt log-probabilities, equal to the transformers ones.
"""

import json

import pytest
import torch
from conftest import tiny_model_dir  # noqa: F401  (a fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

import trl_sso.generation.vllm as vllm_module
from trl_sso.cli.main import main


ITERATE = (
    "--rounds 2 --num_prompts 2 --batch_size 2 --max_completion_length 6 --drop_revealing false "
    "--min_response_chars 0 --max_steps 1 --per_device_train_batch_size 2 --learning_rate 1e-2 "
    "--gradient_checkpointing false --report_to none --max_length 256 --dataloader_pin_memory false "
    "--save_strategy no --no_round_signal --principle_placement system"
)


def run_iterate(model_dir, out, *extra):
    argv = ["iterate", "--model_name_or_path", model_dir, "--output_dir", str(out), *ITERATE.split(), *extra]
    assert main(argv) == 0
    return [json.loads((out / f"round_{t}" / "report.json").read_text()) for t in (1, 2)]


@pytest.mark.slow  # end-to-end (several processes, or whole command runs): outside the fast subset
def test_server_mode_samples_scores_and_gets_each_rounds_policy(tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    from vllm_server import FakeVLLMServer, cpu_weight_transfer

    pushes = cpu_weight_transfer(monkeypatch)
    monkeypatch.setattr(vllm_module, "require_vllm", lambda: None)  # the client needs vLLM only to push weights
    server = FakeVLLMServer(tiny_model_dir)
    try:
        out = tmp_path / "run"
        extra = ["--use_vllm", "--vllm_mode", "server", "--vllm_server_base_url", server.url, "--round_signal"]
        extra += ["--eval_num_prompts", "2", "--eval_max_completion_length", "4"]
        reports = run_iterate(tiny_model_dir, out, *extra)
    finally:
        server.close()
    sampled = [body for path, body in server.requests if path == "/v1/completions" and "prompt_logprobs" not in body]
    assert len(sampled) == 4  # y+/y- and y_o for the batch of each of 2 rounds
    # A(x, y) of each round's data, scored by the server under the round's policy
    scored = [body for path, body in server.requests if body.get("prompt_logprobs") is not None]
    assert sum(len(body["prompt"]) for body in scored) == sum(3 * report["num_records"] for report in reports)
    assert all(report["signal"]["onpolicy"]["mean_logp"]["chosen"] < 0 for report in reports)
    assert all(report["num_records"] + sum(report["dropped"].values()) == 2 for report in reports)
    # round 1 samples from the model the server was started with; round 2's policy is pushed once, in full
    assert len(pushes) == 1
    policy = AutoModelForCausalLM.from_pretrained(out / "round_1" / "policy")
    assert pushes[0] == sorted(name for name, _ in policy.named_parameters())
    for name, value in policy.state_dict().items():
        torch.testing.assert_close(server.model.state_dict()[name], value)


@pytest.mark.parametrize("sleep", [True, False], ids=["sleep mode", "delete"])
@pytest.mark.slow  # end-to-end (several processes, or whole command runs): outside the fast subset
def test_colocate_lifecycle_hands_memory_back_before_training(tiny_model_dir, tmp_path, monkeypatch, sleep):  # noqa: F811
    """TRL's `VLLMGeneration` over a stand-in engine, through 2 rounds of `iterate`: the engine is built once from
    the starting policy; with sleep mode it sleeps after each call and takes the weights of the round's policy when it
    wakes (round 2: round 1's trained policy, by the fingerprint of the weights loaded); without, it is deleted before
    each training and built anew from the next policy."""
    from pathlib import Path

    from vllm_engine import fingerprint, use_stand_in_llm

    import trl_sso.scripts.iterate as iterate_module

    events = use_stand_in_llm(monkeypatch, AutoTokenizer.from_pretrained(tiny_model_dir))
    train_stage = iterate_module.train_stage

    def recorded_train_stage(*args, **kwargs):
        events.append("train")
        return train_stage(*args, **kwargs)

    monkeypatch.setattr(iterate_module, "train_stage", recorded_train_stage)
    out = tmp_path / "run"
    run_iterate(tiny_model_dir, out, "--use_vllm", "--vllm_enable_sleep_mode", str(sleep).lower())
    start = Path(tiny_model_dir).name
    if sleep:
        first = fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
        second = fingerprint(AutoModelForCausalLM.from_pretrained(out / "round_1" / "policy"))
        assert first != second

        def call(weights):  # a generate call of a sleeping engine: the weights and the cache wake, then it sleeps
            return ["wake weights", weights, "wake kv_cache", "generate", "sleep 2"]

        expected = [f"build {start}", "sleep 2", *call(first), *call(first), "train", *call(second), *call(second)]
        expected.append("train")
    else:
        expected = [f"build {start}", "generate", "generate", "delete", "train"]  # y+/y- together, then y_o
        expected += ["build policy", "generate", "generate", "delete", "train"]
    assert events == expected


def test_vllm_sampler_passes_the_settings_of_each_call(tiny_model_dir, monkeypatch):  # noqa: F811
    """Through TRL's `VLLMGeneration` (a stand-in engine): each call's temperature, top_p, token limit and seed, and
    the options' `repetition_penalty`, reach vLLM's `SamplingParams`; the engine's own settings are restored after."""
    from vllm_engine import StandInLLM, use_stand_in_llm

    from trl_sso.generation.arguments import GenerationOptions

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    use_stand_in_llm(monkeypatch, tokenizer)
    engine = vllm_module.VLLMEngine(GenerationOptions(use_vllm=True, repetition_penalty=1.2))
    sampler = engine.sampler(tiny_model_dir, tokenizer)
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Yo"}]]
    out = sampler.sample(prompts, 0.7, 0.8, 3, 5)
    assert [c.finished for c in out] == [False, False] and [c.num_tokens for c in out] == [3, 3]  # cut at 3 tokens
    params = StandInLLM.params[-1]
    assert {k: params[k] for k in ("temperature", "top_p", "max_tokens", "seed", "repetition_penalty", "n")} == {
        "temperature": 0.7, "top_p": 0.8, "max_tokens": 3, "seed": 5, "repetition_penalty": 1.2, "n": 1
    }  # fmt: skip
    assert (engine.generation.temperature, engine.generation.generation_kwargs) == (1.0, {})  # restored
    assert StandInLLM.built[-1]["gpu_memory_utilization"] == 0.3  # `vllm_gpu_memory_utilization`'s default


def test_vllm_samplers_read_truncation_end_of_sequence_and_prompt_logprobs(tiny_model_dir, monkeypatch):  # noqa: F811
    from vllm_server import FakeVLLMServer

    from trl_sso.generation.arguments import GenerationOptions

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    engine = vllm_module.VLLMEngine.__new__(vllm_module.VLLMEngine)
    engine.options, engine.shared = GenerationOptions(use_vllm=True, vllm_mode="server"), False

    class Generation:  # the part of TRL's `VLLMGeneration` the sampler reads
        temperature = top_p = 1.0
        max_completion_length, generation_kwargs, repetition_penalty, top_k, min_p = 16, {}, 1.0, 0, 0.0

        def generate(self, prompts, images, num_generations):
            settings = (self.repetition_penalty, self.generation_kwargs, self.max_completion_length)
            assert settings == (1.1, {"seed": 5}, 3)
            return prompts, [[5, 6, eos], [5, 6, 7], [5]], None, None

    engine.generation = Generation()
    sampler = vllm_module.VLLMSampler(engine, tokenizer, {"repetition_penalty": 1.1})
    prompt = [{"role": "user", "content": "Hi"}]
    finished, cut, short = sampler.sample([prompt] * 3, 0.7, 0.9, 3, 5)
    assert (finished.num_tokens, finished.finished) == (2, True)
    assert (cut.num_tokens, cut.finished) == (3, False)
    assert (short.num_tokens, short.finished) == (1, True)

    # prompt log-probabilities: the token-mean log-prob of each response, as the transformers sampler scores it
    from trl.generation import vllm_client

    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda *args, **kwargs: True)  # the client's own check

    from trl_sso.generation.samplers import TransformersSampler

    server = FakeVLLMServer(tiny_model_dir)
    try:
        engine.generation.vllm_client = vllm_client.VLLMClient(base_url=server.url, connection_timeout=5)
        scores = vllm_module.VLLMSampler(engine, tokenizer).mean_logps([prompt], [["Hello there.", "No."]])
    finally:
        server.close()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = TransformersSampler(model, tokenizer).mean_logps([prompt], [["Hello there.", "No."]])
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), rtol=1e-4, atol=1e-4)
