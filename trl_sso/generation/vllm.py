"""Sampling with vLLM: one path, TRL's `VLLMGeneration` (the engine of TRL's online trainers), for every command
and for online training, under TRL's option names (`use_vllm`, `vllm_mode`, `vllm_*`).

- **colocate**: a `vllm.LLM` per process (per tensor-parallel group of `vllm_tensor_parallel_size` processes),
  built by `VLLMGeneration` as GRPO builds it.
- **server**: TRL's `VLLMClient` against `trl vllm-serve` (`vllm_server_base_url`); as in TRL, the server runs on
  GPUs of its own, and the main process opens the NCCL link that carries a new policy's weights to it.

`VLLMEngine` holds one `VLLMGeneration` for a run:
- online training builds it on the trainer's model (`VLLMEngine.for_trainer`) and calls `sync()` once per optimizer
  step, as GRPO does;
- `generate`, `iterate`, `pipeline`, `calibrate` and `evaluate` build it once and load each policy with
  `sampler(path)`: the checkpoint is read into host memory and its weights are streamed to the engine (or pushed to
  the server) by TRL's `sync_weights`; `release()` hands the GPU back before training (a colocated engine with
  `vllm_enable_sleep_mode` sleeps after every call, as in TRL, and takes the weights again before the next; without
  it the engine is deleted and the next policy builds a new one).

`VLLMSampler` answers as `TransformersSampler` does: `sample(...)` with the sampling settings passed per call,
`mean_logps(...)` for the log-probability filter and `completion_logps(...)` for A(x, y), from the prompt
log-probabilities vLLM returns for a whole sequence (`prompt_logps`, the one place they are read).

Processes that share one engine (the processes of a colocated tensor-parallel group; every process, in server
mode, outside training) work on the same batches (`trl_sso.generation.generator.generation_worker`): the group's first
process sends the batch, and its results are handed to the others, so that every process of the group follows the
same steps.
"""

import gc
import logging
import types
from contextlib import contextmanager
from pathlib import Path

from ..data import render
from ..runtime import process_state
from .samplers import Completion, response_mean_logps


logger = logging.getLogger(__name__)

# sampling settings that `VLLMGeneration` holds as attributes; the others go in its `generation_kwargs`
NAMED_SETTINGS = ("repetition_penalty", "top_k", "min_p")


def require_vllm() -> None:
    from trl.import_utils import is_vllm_available

    if not is_vllm_available():
        raise ImportError(
            "`use_vllm=True` needs vLLM, which is not installed. Install it on a GPU machine with "
            "`pip install trl-sso[vllm]`, or leave `use_vllm` off to sample with transformers."
        )


def build_generation(options, model, accelerator, processing_class, trust_remote_code: bool = False):
    """TRL's `VLLMGeneration` for `model` under the `VLLMOptions` of `options`: the one place its settings are
    given. The sampling settings are set per call (`VLLMEngine.generate`)."""
    from trl.generation.vllm_generation import VLLMGeneration

    return VLLMGeneration(
        model=model,
        accelerator=accelerator,
        processing_class=processing_class,
        mode=options.vllm_mode,
        server_base_url=options.vllm_server_base_url,
        server_timeout=options.vllm_server_timeout,
        tensor_parallel_size=options.vllm_tensor_parallel_size,
        gpu_memory_utilization=options.vllm_gpu_memory_utilization,
        max_model_length=options.vllm_max_model_length,
        enable_sleep_mode=options.vllm_enable_sleep_mode,
        trust_remote_code=trust_remote_code,
        logprobs=None,  # the sampled tokens' log-probs are not used
    )


class _Processes:
    """The view of this process that `VLLMGeneration` reads from an `Accelerator`, for the commands that have none.
    The policy they load lives whole in host memory (no DeepSpeed or FSDP sharding to gather)."""

    def __init__(self):
        self._state = process_state()
        self.state = types.SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=None)

    def __getattr__(self, name):
        return getattr(self._state, name)


def _load_policy(path: str, revision: str, trust_remote_code: bool):
    """The policy at `path` in host memory, its `name_or_path` a local folder (a colocated engine is built from it, so
    a Hub id's `revision` is resolved to its snapshot first)."""
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir():
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, revision=revision)
    return AutoModelForCausalLM.from_pretrained(path, dtype="auto", trust_remote_code=trust_remote_code)


class VLLMEngine:
    """The run's `VLLMGeneration` (see the module docstring); `shared`: the processes of a group work on the same
    batches (the commands), rather than each on its own (online training)."""

    def __init__(self, options, generation=None, shared: bool = True):
        require_vllm()
        self.options, self.generation, self.shared, self.policy = options, generation, shared, None

    @classmethod
    def for_trainer(cls, trainer, trust_remote_code: bool = False) -> "VLLMEngine":
        """The engine of online training: on the trainer's model and accelerator, each process with its prompts."""
        require_vllm()
        generation = build_generation(
            trainer.args, trainer.model, trainer.accelerator, trainer.processing_class, trust_remote_code
        )
        return cls(trainer.args, generation, shared=False)

    @property
    def colocate(self) -> bool:
        return self.options.vllm_mode == "colocate"

    # -----------------------------------------------------------------------------------------------------------------
    # Policies

    def sampler(self, model_path: str, tokenizer, revision: str = "main", trust_remote_code: bool = False):
        """A sampler over the engine with `model_path`'s weights loaded (the commands)."""
        if self.generation is None:
            logger.info(f"Starting vLLM ({self.options.vllm_mode}) on {model_path}.")
            model = self._policy_weights(model_path, revision, trust_remote_code)
            self.generation = build_generation(self.options, model, _Processes(), tokenizer, trust_remote_code)
            client = getattr(self.generation, "vllm_client", None)  # the main process's, in server mode
            if client is not None and client.model != model_path:  # the server started with another model
                self.sync()
        elif model_path != self.policy:
            logger.info(f"Loading the weights of {model_path} into vLLM.")
            self.generation.model = self._policy_weights(model_path, revision, trust_remote_code)
            if self.generation.model is not None and not self._weights_asleep():
                self.sync()  # asleep, the weights are loaded when the engine wakes (`VLLMGeneration.generate`)
        self.policy = model_path
        return self.make_sampler(tokenizer)

    def _policy_weights(self, model_path, revision, trust_remote_code):
        """The policy in host memory where this process streams it: a colocated engine's process, or the main process
        (which pushes to a server)."""
        if self.colocate or process_state().is_main_process:
            return _load_policy(model_path, revision, trust_remote_code)
        return None

    def make_sampler(self, tokenizer) -> "VLLMSampler":
        return VLLMSampler(self, tokenizer, self.options.sampling_kwargs())

    def sync(self) -> None:
        """Stream the policy's weights to the engine or the server (TRL's `sync_weights`)."""
        self.generation.sync_weights()

    def _weights_asleep(self) -> bool:
        return self.colocate and getattr(self.generation, "_llm_weights_sleeping", False)

    def release(self) -> None:
        """Hand the GPU memory back before training. With `vllm_enable_sleep_mode` the colocated engine already sleeps
        between calls (TRL's `VLLMGeneration`); else it is deleted. A server keeps its own GPUs: nothing to do."""
        if self.generation is None or not self.colocate or self.options.vllm_enable_sleep_mode:
            return
        self.generation, self.policy = None, None
        _empty_cache()

    def scorer(self, model_path: str, tokenizer):
        """`completion_logps` on this process alone, for A(x, y) under `model_path` when the server holds it; None
        otherwise (a colocated engine has handed its memory to training by then)."""
        if self.colocate or self.generation is None or model_path != self.policy:
            return None
        return VLLMSampler(self, tokenizer, shared=False).completion_logps

    # -----------------------------------------------------------------------------------------------------------------
    # Calls

    def _group(self):
        """The process group that shares this engine's batches, as `(leader, group)` (`group` None: all processes),
        or None where each process works alone."""
        import torch.distributed as dist

        if not self.shared or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return None
        if not self.colocate:
            return 0, None
        size = self.options.vllm_tensor_parallel_size
        if size == 1:
            return None
        return dist.get_rank() // size * size, self.generation.tp_group

    def _from_leader(self, compute, *, collective: bool):
        """`compute(leader)` with the group's leader's result on every process of the group; `collective`: every
        process calls `compute` (it holds collectives), else the leader alone."""
        import torch.distributed as dist

        group = self._group()
        if group is None:
            return compute(True)
        leader, process_group = group
        is_leader = dist.get_rank() == leader
        result = [compute(is_leader) if collective or is_leader else None]
        dist.broadcast_object_list(result, src=leader, group=process_group)
        return result[0]

    def generate(self, prompt_ids, temperature, top_p, max_tokens, kwargs) -> list[list[int]]:
        """Completion token ids of each prompt, sampled with the settings of this call."""

        def compute(is_leader):
            with self._settings(temperature, top_p, max_tokens, kwargs):
                _, completions, _, _ = self.generation.generate(prompt_ids if is_leader else [], None, 1)
            return [list(ids) for ids in completions]

        return self._from_leader(compute, collective=True)

    @contextmanager
    def _settings(self, temperature, top_p, max_tokens, kwargs):
        """`VLLMGeneration` reads its sampling settings from attributes: set this call's, then restore them."""
        generation, kwargs = self.generation, dict(kwargs)
        names = ("temperature", "top_p", "max_completion_length", "generation_kwargs", *NAMED_SETTINGS)
        saved = {name: getattr(generation, name) for name in names}
        named = {name: kwargs.pop(name) for name in NAMED_SETTINGS if name in kwargs}
        values = dict(temperature=temperature, top_p=top_p, max_completion_length=max_tokens, generation_kwargs=kwargs)
        try:
            for name, value in {**values, **named}.items():
                setattr(generation, name, value)
            yield
        finally:
            for name, value in saved.items():
                setattr(generation, name, value)

    def prompt_logps(self, sequences: list[list[int]], starts: list[int], shared: bool = True) -> list[list[float]]:
        """The log-probability of each token of `sequences[i]` from `starts[i]` on, under the loaded policy, from
        vLLM's prompt log-probabilities (a colocated engine) or TRL's `get_sequence_logprobs` (a server)."""
        generation = self.generation
        if self.colocate:  # every process of a tensor-parallel group runs the same request, as vLLM needs
            return _colocated_prompt_logps(generation, sequences, starts)

        def compute(is_leader):
            scores = generation.vllm_client.get_sequence_logprobs(sequences, starts, top_logprobs=1)
            return [[position[0] for position in row] for row in scores["actual_logprobs"]]

        return self._from_leader(compute, collective=False) if shared else compute(True)


def _colocated_prompt_logps(generation, sequences, starts):
    from trl.generation import vllm_generation

    params = vllm_generation.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
    asleep = generation.enable_sleep_mode and generation._llm_weights_sleeping
    if asleep:  # TRL's `generate` puts the engine to sleep after each call: wake it with the policy's weights
        generation.sync_weights()
        generation.llm.wake_up(tags=["kv_cache"])
    outputs = generation.llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
    if asleep:
        generation.llm.sleep(level=2)
        generation._llm_weights_sleeping = True
    return [
        [output.prompt_logprobs[t][sequence[t]].logprob for t in range(start, len(sequence))]
        for output, sequence, start in zip(outputs, sequences, starts, strict=True)
    ]


class VLLMSampler:
    """`sample`, `completion_logps` and `mean_logps` over a `VLLMEngine`, as `TransformersSampler` answers them."""

    def __init__(self, engine: VLLMEngine, tokenizer, generation_kwargs: dict | None = None, shared: bool = True):
        self.engine, self.tokenizer, self.shared = engine, tokenizer, shared
        self.generation_kwargs = dict(generation_kwargs or {})
        eos = {tokenizer.eos_token_id} | set(getattr(tokenizer, "additional_special_tokens_ids", None) or ())
        self.eos_ids = {token for token in eos if token is not None}

    def sample(self, prompts, temperature: float, top_p: float, max_new_tokens: int, seed: int, desc=None):
        texts = [render(self.tokenizer, messages) for messages in prompts]
        prompt_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        kwargs = {"seed": seed, **self.generation_kwargs}
        outputs = self.engine.generate(prompt_ids, temperature, top_p, max_new_tokens, kwargs)
        results = []
        for tokens in outputs:
            kept = list(tokens)
            while kept and kept[-1] in self.eos_ids:
                kept.pop()
            finished = len(kept) < len(tokens) or len(tokens) < max_new_tokens
            text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
            results.append(Completion(text=text, num_tokens=len(kept), finished=finished))
        return results

    def completion_logps(self, rows: list[tuple[list[int], list[list[int]]]]) -> list[list[tuple[float, int]]]:
        """For each `(prompt_ids, [completion_ids, ...])`, the summed log-probability of each completion after the
        prompt and its number of tokens (as `trl_sso.sharing.completion_logps` gives them)."""
        sequences = [prompt + completion for prompt, completions in rows for completion in completions]
        starts = [len(prompt) for prompt, completions in rows for _ in completions]
        values = iter(self.engine.prompt_logps(sequences, starts, self.shared) if sequences else [])
        return [[(sum(row), len(row)) for row in (next(values) for _ in completions)] for _, completions in rows]

    def mean_logps(self, prompts: list[list[dict]], responses: list[list[str]]) -> list[list[float]]:
        """The log-probability filter's scores (`trl_sso.generation.samplers.response_mean_logps`), by vLLM."""
        return response_mean_logps(self.tokenizer, prompts, responses, self.completion_logps)


def _empty_cache() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
