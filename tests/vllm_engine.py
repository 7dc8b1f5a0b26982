"""A stand-in for `vllm.LLM` on the CPU, under TRL's real `VLLMGeneration` (colocate mode): it records what is done to
the engine (built, put to sleep, woken, weights loaded, generate calls with their sampling parameters) and answers
each request with a few fixed tokens. `use_stand_in_llm` puts it where `VLLMGeneration` looks for vLLM."""

import types
import weakref

import torch


class StandInLLM:
    """Records what is done to a colocated engine; answers with a few fixed tokens and the end-of-sequence token."""

    events: list[str] = []
    tokenizer = None
    params: list[dict] = []  # the sampling parameters of each generate call
    built: list[dict] = []  # the settings of each engine built

    def __init__(self, model, **settings):
        self.model, self.settings = model, settings
        self.events.append(f"build {model.rstrip('/').split('/')[-1]}")
        weakref.finalize(self, self.events.append, "delete")
        runner = types.SimpleNamespace(model=self)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner))
        )
        # the settings only: a reference to the engine itself would keep it alive
        StandInLLM.built.append({"model": model, **settings})

    def generate(self, requests, sampling_params=None, use_tqdm=False):
        self.events.append("generate")
        self.params.append(dict(sampling_params))
        outputs, call = [], len(self.events)
        for index, request in enumerate(requests):  # a different answer per request and call: y+, y- and y_o differ
            answer = self.tokenizer(f"Answer {call}.{index}.", add_special_tokens=False)["input_ids"]
            tokens = (answer + [self.tokenizer.eos_token_id])[: sampling_params["max_tokens"]]
            completion = types.SimpleNamespace(token_ids=tokens, logprobs=None)
            outputs.append(types.SimpleNamespace(prompt_token_ids=request["prompt_token_ids"], outputs=[completion]))
        return outputs

    def sleep(self, level):
        self.events.append(f"sleep {level}")

    def wake_up(self, tags=None):
        self.events.append(f"wake {' '.join(tags or ['all'])}")

    def load_weights(self, weights):
        """One event per sync (consecutive loads are counted together), with a fingerprint of the weights."""
        weights = list(weights)
        total = sum(float(tensor.double().sum()) for _, tensor in weights)
        if not (self.events and self.events[-1].startswith("load ")):
            self.events.append("load")
            self.loaded = [0, 0.0]
        self.loaded = [self.loaded[0] + len(weights), self.loaded[1] + total]
        self.events[-1] = f"load {self.loaded[0]} tensors {self.loaded[1]:.6g}"

    def reset_prefix_cache(self):
        pass


def fingerprint(model) -> str:
    """The fingerprint `StandInLLM.load_weights` records for a sync of `model`'s weights."""
    tensors = [tensor for _, tensor in model.named_parameters()]
    total = sum(float(tensor.detach().double().sum()) for tensor in tensors)
    return f"load {len(tensors)} tensors {total:.6g}"


def use_stand_in_llm(monkeypatch, tokenizer) -> list[str]:
    """Make TRL's `VLLMGeneration` build `StandInLLM` (vLLM "installed"); returns the list of recorded events."""
    import trl.generation.vllm_generation as vllm_generation

    import trl_sso.generation.vllm as vllm_module

    StandInLLM.events, StandInLLM.params, StandInLLM.built, StandInLLM.tokenizer = [], [], [], tokenizer
    monkeypatch.setattr(vllm_module, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda *args, **kwargs: True)
    monkeypatch.setattr(vllm_generation, "LLM", StandInLLM, raising=False)
    monkeypatch.setattr(vllm_generation, "SamplingParams", dict, raising=False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # TRL sets them for vLLM:
        monkeypatch.setenv(name, "")  # recorded as they are now (unset, in a test run), and so restored after
        monkeypatch.delenv(name)
    return StandInLLM.events
