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
import sys
import types
import weakref

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


class StandInEngine:
    """Records what is done to a colocated engine; answers with a few fixed tokens."""

    events: list[str] = []

    def __init__(self, model_path, tokenizer):
        self.tokenizer = tokenizer
        self.events.append(f"build {model_path.name}")
        weakref.finalize(self, self.events.append, "delete")
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(
                driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=self))
            )
        )

    def generate(self, requests, params, use_tqdm=False):
        self.events.append("generate")
        outputs, call = [], len(self.events)
        for index, _ in enumerate(requests):  # a different answer per request and call: y+, y- and y_o differ
            answer = self.tokenizer(f"Answer {call}.{index}.", add_special_tokens=False)["input_ids"]
            completion = types.SimpleNamespace(token_ids=answer + [self.tokenizer.eos_token_id])
            outputs.append(types.SimpleNamespace(outputs=[completion]))
        return outputs

    def sleep(self, level):
        self.events.append(f"sleep {level}")

    def wake_up(self):
        self.events.append("wake")

    def load_weights(self, weights):
        self.events.append(f"load {len(list(weights))} tensors")

    def reset_prefix_cache(self):
        pass


@pytest.mark.parametrize("sleep", [True, False], ids=["sleep mode", "delete"])
@pytest.mark.slow  # end-to-end (several processes, or whole command runs): outside the fast subset
def test_colocate_lifecycle_hands_memory_back_before_training(tiny_model_dir, tmp_path, monkeypatch, sleep):  # noqa: F811
    from pathlib import Path

    import trl_sso.scripts.iterate as iterate_module

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    events = StandInEngine.events = []
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=dict))
    monkeypatch.setattr(vllm_module, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_module, "_build_llm", lambda options, path, *rest: StandInEngine(Path(path), tokenizer))
    train_stage = iterate_module.train_stage

    def recorded_train_stage(*args, **kwargs):
        events.append("train")
        return train_stage(*args, **kwargs)

    monkeypatch.setattr(iterate_module, "train_stage", recorded_train_stage)
    extra = ["--use_vllm", "--vllm_enable_sleep_mode", str(sleep).lower()]
    run_iterate(tiny_model_dir, tmp_path / "run", *extra)
    start = Path(tiny_model_dir).name
    round_one = ["generate"] * 2  # one batch: y+ and y- together, then y_o
    if sleep:
        tensors = len(list(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters()))
        second = ["wake", f"load {tensors} tensors"]
        expected = [f"build {start}", *round_one, "sleep 1", "train", *second, *round_one, "sleep 1", "train"]
    else:
        expected = [f"build {start}", *round_one, "delete", "train", "build policy", *round_one, "delete", "train"]
    assert events == expected


def test_vllm_samplers_read_truncation_end_of_sequence_and_prompt_logprobs(tiny_model_dir):  # noqa: F811
    from vllm_server import FakeVLLMServer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id

    class Client:
        def generate(self, prompts, n, logprobs, generation_kwargs, temperature, top_p, max_tokens):
            assert generation_kwargs == {"seed": 5, "repetition_penalty": 1.1}
            return {"completion_ids": [[5, 6, eos], [5, 6, 7], [5]]}

    sampler = vllm_module.ServerSampler(Client(), tokenizer, {"repetition_penalty": 1.1})
    prompt = [{"role": "user", "content": "Hi"}]
    finished, cut, short = sampler.sample([prompt] * 3, 0.7, 0.9, 3, 5)
    assert (finished.num_tokens, finished.finished) == (2, True)
    assert (cut.num_tokens, cut.finished) == (3, False)
    assert (short.num_tokens, short.finished) == (1, True)

    # prompt log-probabilities: the token-mean log-prob of each response, as the transformers sampler scores it
    from trl_sso.generation.samplers import TransformersSampler

    server = FakeVLLMServer(tiny_model_dir)
    try:

        class LogpClient:
            def get_sequence_logprobs(self, sequences, starts, top_logprobs):
                choices = [server._prompt_logprobs(ids) for ids in sequences]
                return {
                    "actual_logprobs": [
                        [[next(iter(c["prompt_logprobs"][t].values()))["logprob"]] for t in range(s, len(ids))]
                        for c, ids, s in zip(choices, sequences, starts)
                    ]
                }

        scores = vllm_module.ServerSampler(LogpClient(), tokenizer).mean_logps([prompt], [["Hello there.", "No."]])
    finally:
        server.close()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = TransformersSampler(model, tokenizer).mean_logps([prompt], [["Hello there.", "No."]])
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), rtol=1e-4, atol=1e-4)
