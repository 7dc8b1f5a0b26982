"""Sampling with vLLM, the way TRL's online trainers use it (`use_vllm`, `vllm_mode`, TRL's option names).

- **colocate**: a `vllm.LLM` in this process, built with the settings of TRL's `VLLMGeneration`:
  `distributed_executor_backend="external_launcher"`, so that under `accelerate launch` each process (each
  tensor-parallel group of `vllm_tensor_parallel_size` processes) holds one engine, seeded per group.
- **server**: TRL's `VLLMClient` against `trl vllm-serve` or `vllm serve` (`vllm_server_base_url`). A policy that
  is not the one the server loaded (a later round's) has its weights pushed through the client
  (`update_model_params`, over vLLM's NCCL weight transfer).

`VLLMEngine` holds the engine or the client across generations, so that `trl-sso iterate` and `trl-sso pipeline`
build it once: `sampler(policy)` loads a round's policy (a colocated engine wakes up and takes the checkpoint's
weights, or is built from it), and `release()` hands the GPU memory back before training (sleep when
`vllm_enable_sleep_mode`, else the engine is deleted). Its samplers answer as `TransformersSampler` does:
`sample(...)` for the responses, `mean_logps(...)` for the log-probability filter and `completion_logps(...)` for
A(x, y), from the prompt log-probabilities vLLM returns for a sequence (TRL's `get_sequence_logprobs` on a server).
"""

import gc
import logging
import os

from ..data import render
from ..runtime import process_state
from .samplers import Completion, response_mean_logps


logger = logging.getLogger(__name__)

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


def require_vllm() -> None:
    from trl.import_utils import is_vllm_available

    if not is_vllm_available():
        raise ImportError(
            "`use_vllm=True` needs vLLM, which is not installed. Install it on a GPU machine with "
            "`pip install trl-sso[vllm]`, or leave `use_vllm` off to sample with transformers."
        )


class VLLMSampler:
    """`sample` and `mean_logps` over a vLLM engine or server; `_generate` and `_prompt_logps` are the two calls
    that differ."""

    def __init__(self, tokenizer, generation_kwargs: dict | None = None):
        self.tokenizer, self.generation_kwargs = tokenizer, dict(generation_kwargs or {})
        eos = {tokenizer.eos_token_id} | set(getattr(tokenizer, "additional_special_tokens_ids", None) or ())
        self.eos_ids = {token for token in eos if token is not None}

    def _prompt_ids(self, prompts: list[list[dict]]) -> list[list[int]]:
        texts = [render(self.tokenizer, messages) for messages in prompts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def sample(self, prompts, temperature: float, top_p: float, max_new_tokens: int, seed: int, desc=None):
        params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens, "seed": seed}
        outputs = self._generate(self._prompt_ids(prompts), {**params, **self.generation_kwargs}, desc)
        results = []
        for tokens in outputs:
            kept = list(tokens)
            while kept and kept[-1] in self.eos_ids:
                kept.pop()
            finished = len(kept) < len(tokens) or len(tokens) < params["max_tokens"]
            text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
            results.append(Completion(text=text, num_tokens=len(kept), finished=finished))
        return results

    def completion_logps(self, rows: list[tuple[list[int], list[list[int]]]]) -> list[list[tuple[float, int]]]:
        """For each `(prompt_ids, [completion_ids, ...])`, the summed log-probability of each completion after the
        prompt and its number of tokens (as `trl_sso.sharing.completion_logps` gives them), from vLLM's prompt
        log-probabilities of the whole sequence."""
        sequences = [prompt + completion for prompt, completions in rows for completion in completions]
        starts = [len(prompt) for prompt, completions in rows for _ in completions]
        values = iter(self._prompt_logps(sequences, starts) if sequences else [])
        return [[(sum(row), len(row)) for row in (next(values) for _ in completions)] for _, completions in rows]

    def mean_logps(self, prompts: list[list[dict]], responses: list[list[str]]) -> list[list[float]]:
        """The log-probability filter's scores (`trl_sso.generation.samplers.response_mean_logps`), by vLLM."""
        return response_mean_logps(self.tokenizer, prompts, responses, self.completion_logps)


class ColocateSampler(VLLMSampler):
    """Samples with a `vllm.LLM` in this process."""

    def __init__(self, llm, tokenizer, generation_kwargs=None):
        super().__init__(tokenizer, generation_kwargs)
        self.llm = llm

    def _generate(self, prompt_ids, params, desc=None):
        from vllm import SamplingParams

        requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = self.llm.generate(requests, SamplingParams(**params), use_tqdm=desc is not None)
        return [output.outputs[0].token_ids for output in outputs]

    def _prompt_logps(self, sequences, starts):
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
        return [
            [output.prompt_logprobs[t][sequence[t]].logprob for t in range(start, len(sequence))]
            for output, sequence, start in zip(outputs, sequences, starts, strict=True)
        ]


class ServerSampler(VLLMSampler):
    """Samples with TRL's `VLLMClient` from a vLLM server."""

    def __init__(self, client, tokenizer, generation_kwargs=None):
        super().__init__(tokenizer, generation_kwargs)
        self.client = client

    def _generate(self, prompt_ids, params, desc=None):
        settings = {key: params.pop(key) for key in ("temperature", "top_p", "max_tokens")}
        output = self.client.generate(prompts=prompt_ids, n=1, logprobs=None, generation_kwargs=params, **settings)
        return output["completion_ids"]

    def _prompt_logps(self, sequences, starts):
        scores = self.client.get_sequence_logprobs(sequences, starts, top_logprobs=1)
        return [[position[0] for position in row] for row in scores["actual_logprobs"]]


class TrainerEngineSampler(VLLMSampler):
    """Samples through TRL's `VLLMGeneration` (colocate or server), the engine of TRL's online trainers, which
    `OnlineSSOTrainer` builds and whose weights it syncs; each call sets the sampling settings of the call."""

    def __init__(self, generation, tokenizer, generation_kwargs=None):
        super().__init__(tokenizer, generation_kwargs)
        self.generation = generation

    def _generate(self, prompt_ids, params, desc=None):
        engine = self.generation
        engine.temperature, engine.top_p = params.pop("temperature"), params.pop("top_p")
        engine.max_completion_length = params.pop("max_tokens")
        engine.generation_kwargs = params  # the seed, and the user's `generation_kwargs`
        _, completion_ids, _, _ = engine.generate(prompt_ids, None, num_generations=1)
        return completion_ids

    def _prompt_logps(self, sequences, starts):
        raise NotImplementedError("Online training does not score responses with vLLM (no log-probability filter).")


def _build_llm(options, model_path: str, revision: str, trust_remote_code: bool):
    """A `vllm.LLM` for this process, as TRL's `VLLMGeneration` builds its colocated engine."""
    from trl.trainer.utils import ensure_master_addr_port
    from vllm import LLM

    state = process_state()
    size = options.vllm_tensor_parallel_size
    if state.num_processes % size:
        raise ValueError(
            f"`vllm_tensor_parallel_size` ({size}) must divide the number of processes ({state.num_processes}); "
            "each group of that many processes shares one engine."
        )
    os.environ.update(
        RANK=str(state.process_index), LOCAL_RANK=str(state.local_process_index), WORLD_SIZE=str(state.num_processes)
    )
    ensure_master_addr_port()
    return LLM(
        model=model_path,
        revision=revision,
        tensor_parallel_size=size,
        gpu_memory_utilization=options.vllm_gpu_memory_utilization,
        max_model_len=options.vllm_max_model_length,
        enable_sleep_mode=options.vllm_enable_sleep_mode,
        distributed_executor_backend="external_launcher",
        seed=state.process_index // size,  # the processes of a tensor-parallel group sample alike
        max_num_batched_tokens=4096,
        trust_remote_code=trust_remote_code,
    )


def _connect(options):
    """TRL's `VLLMClient` for `vllm_server_base_url`, once the server answers its health check."""
    from trl.generation.vllm_client import VLLMClient

    url = options.vllm_server_base_url or DEFAULT_SERVER_URL
    try:
        return VLLMClient(base_url=url, connection_timeout=options.vllm_server_timeout)
    except ConnectionError as error:
        raise ConnectionError(
            f"No vLLM server answered at {url} within {options.vllm_server_timeout:.0f} s. Start one with "
            "`trl vllm-serve --model <policy>` (or `vllm serve`), or set `--vllm_server_base_url`."
        ) from error


def _checkpoint_parameters(model_path: str, revision: str, trust_remote_code: bool, device: str = "cpu"):
    """The model at `model_path`, loaded to stream its parameters into an engine."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_path, revision=revision, dtype="auto", trust_remote_code=trust_remote_code
    )
    return model.to(device)


class VLLMEngine:
    """The vLLM engine (colocate) or server client of a run, kept across generations; see the module docstring."""

    def __init__(self, options):
        require_vllm()
        self.options, self.llm, self.client, self.policy, self.asleep = options, None, None, None, False

    @property
    def colocate(self) -> bool:
        return self.options.vllm_mode == "colocate"

    def sampler(self, model_path: str, tokenizer, revision: str = "main", trust_remote_code: bool = False):
        """A sampler with `model_path`'s weights loaded."""
        kwargs = self.options.sampling_kwargs()
        if self.colocate:
            self._load_colocated(model_path, revision, trust_remote_code)
            return ColocateSampler(self.llm, tokenizer, kwargs)
        if self.client is None:
            self.client = _connect(self.options)
            self.policy = self.client.model  # the model the server was started with
        if model_path != self.policy:
            self._push_to_server(model_path, revision, trust_remote_code)
        return ServerSampler(self.client, tokenizer, kwargs)

    def _load_colocated(self, model_path, revision, trust_remote_code):
        if self.llm is None:
            logger.info(f"Starting a colocated vLLM engine on {model_path}.")
            self.llm, self.policy = _build_llm(self.options, model_path, revision, trust_remote_code), model_path
            return
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        if model_path != self.policy:
            logger.info(f"Loading the weights of {model_path} into the colocated vLLM engine.")
            model = _checkpoint_parameters(model_path, revision, trust_remote_code)
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(model.named_parameters())
            self.llm.reset_prefix_cache()
            self.policy = model_path
            del model

    def _push_to_server(self, model_path, revision, trust_remote_code):
        """Push `model_path`'s weights to the server through the client (the main process; NCCL needs a GPU)."""
        import torch

        state = process_state()
        if state.is_main_process:
            logger.info(f"Pushing the weights of {model_path} to the vLLM server at {self.client.base_url}.")
            device = state.device if state.device.type == "cuda" else torch.device("cpu")
            model = _checkpoint_parameters(model_path, revision, trust_remote_code, device)
            if self.client.communicator is None:
                self.client.init_communicator(device=device)
            self.client.update_model_params(model)
            self.client.reset_prefix_cache()
            del model
            _empty_cache()
        state.wait_for_everyone()
        self.policy = model_path

    def scorer(self, model_path: str, tokenizer):
        """The server's `completion_logps` for A(x, y) when it holds `model_path` (server mode, on any process, no
        weights pushed); otherwise None: a colocated engine has handed its memory to training by then."""
        if self.colocate or self.client is None or model_path != self.policy:
            return None
        return ServerSampler(self.client, tokenizer).completion_logps

    def release(self) -> None:
        """Hand the engine's GPU memory back before training: sleep (weights to host memory, KV cache freed) with
        `vllm_enable_sleep_mode`, else delete the engine. A server keeps its own GPUs: nothing to do."""
        if not self.colocate or self.llm is None or self.asleep:
            return
        if self.options.vllm_enable_sleep_mode:
            self.llm.sleep(level=1)
            self.asleep = True
        else:
            self.llm, self.policy = None, None
        _empty_cache()


def _empty_cache() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
