"""The options of the SSO data generator (light: no heavy imports, so `trl-sso generate --help` answers at once).

- `SamplingOptions`, `TripleOptions`, `VLLMOptions`: each option declared once (name, default, help, range), and
  inherited by every command that takes it (the generator, online training, `calibrate`, `evaluate`).
- `GenerationOptions`: what to generate and how: the prompt set, sampling, principles and filters. `trl-sso iterate`
  and `trl-sso pipeline` take these and set the rest themselves.
- `GenerateArguments`: those plus the model (under TRL's `ModelConfig` names), the output folder and the provenance
  of the data: everything `trl_sso.generation.generate` and `trl-sso generate` take.
"""

import json
import warnings
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..data import PLACEMENTS
from ..options import AT_LEAST_0, AT_LEAST_1, POSITIVE, PROBABILITY, Range, check_ranges


DTYPES = ("auto", "bfloat16", "float16", "float32")  # as TRL's `ModelConfig.dtype`
DEFAULT_GENERATION_PLACEMENT = "after_question"  # chosen by `trl-sso calibrate` on the packaged model (README)

# What an option's metadata may say besides its help text, read where the option is used rather than listed there:
# - "range": the `trl_sso.options.Range` its numbers must lie in (`check_ranges`);
# - "affects_data": False for options that change how the data is reported, or where and how fast it is sampled, but
#   not the data: they stay out of the generator's resume key (default True);
# - "sampling_kwarg": True for a sampling option handed to the sampler under its own name (transformers' `generate`
#   and vLLM's `SamplingParams` share it), so that a new one is a single field (`SamplingOptions.sampling_kwargs`);
# - "deprecated_for": the option that replaced this spelling; given, it is moved there with a FutureWarning
#   (`take_deprecated`).


def deprecated(new: str) -> Any:
    """The field of an old spelling of `new`, kept until trl-sso 0.2 (`take_deprecated` moves its value)."""
    return field(
        default=None,
        metadata={
            "help": f"Deprecated (removed in trl-sso 0.2): use `{new}`.",
            "deprecated_for": new,
            "affects_data": False,
        },
    )


def take_deprecated(instance) -> None:
    """Move the values of old spellings (`deprecated`) to their new names, with a FutureWarning each; a value given
    under both names is an error."""
    for f in fields(instance):
        new = f.metadata.get("deprecated_for")
        value = getattr(instance, f.name)
        if new is None or value is None:
            continue
        default = next(g for g in fields(instance) if g.name == new)
        default = default.default_factory() if default.default_factory is not MISSING else default.default
        if getattr(instance, new) != default and getattr(instance, new) != value:
            raise ValueError(
                f"`{f.name}` is the old name of `{new}`, and both are set ({value!r}, "
                f"{getattr(instance, new)!r}). Keep `{new}` only."
            )
        warnings.warn(
            f"`{f.name}` is deprecated and will be removed in trl-sso 0.2; use `{new}` instead.",
            FutureWarning,
            stacklevel=5,
        )
        setattr(instance, new, value)
        setattr(instance, f.name, None)


def redefault(mixin: type, name: str, default: Any, **metadata) -> Any:
    """The field `name` of `mixin` with another default (and, where given, other metadata such as its range): for a
    command that truly needs one, with the reason beside it. The help text stays the mixin's."""
    return field(default=default, metadata={**mixin.__dataclass_fields__[name].metadata, **metadata})


@dataclass
class SamplingOptions:
    """How responses are sampled, under the names of TRL's online trainers (`GRPOConfig`): declared once here for the
    generator, `trl-sso iterate` and `pipeline`, online training, `calibrate` and `evaluate`."""

    max_completion_length: int = field(
        default=256, metadata={"help": "Maximum new tokens per response (the paper uses 2048).", "range": AT_LEAST_1}
    )
    temperature: float = field(
        default=0.7,
        metadata={
            "help": "Sampling temperature (of y+ and y- when generating triples).",
            # sampling: 0 would silently decode greedily, and above 2 the samples are noise
            "range": Range(0, 2, low_open=True),
        },
    )
    top_p: float = field(
        default=0.8, metadata={"help": "Nucleus sampling threshold.", "range": Range(0, 1, low_open=True)}
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Penalty on tokens already in the prompt or the response: 1 samples the model as it is, above 1 "
            "discourages repeats (as transformers' `generate` and vLLM take it).",
            "range": POSITIVE,
            "sampling_kwarg": True,
        },
    )
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "More sampling settings, as a JSON mapping: keyword arguments of transformers' `generate`, or of "
            "vLLM's `SamplingParams` with `use_vllm` (as TRL's online trainers take them). A key that trl-sso also "
            "sets (temperature, top_p, top_k, do_sample, the token limit, repetition_penalty) takes the value given "
            "here."
        },
    )

    def _check_sampling(self) -> None:
        if isinstance(self.generation_kwargs, str):
            self.generation_kwargs = _json_mapping(self.generation_kwargs)

    def sampling_kwargs(self) -> dict:
        """What the sampler gets beyond the temperature, top_p and the token limit: every option marked
        `sampling_kwarg` that differs from its default, then `generation_kwargs`, which win."""
        own = {
            f.name: getattr(self, f.name)
            for f in fields(SamplingOptions)
            if f.metadata.get("sampling_kwarg") and getattr(self, f.name) != f.default
        }
        return {**own, **(self.generation_kwargs or {})}


@dataclass
class TripleOptions:
    """What makes an SSO triple besides sampling: the principles, where they go, y_o's temperature, and the filters.
    Declared once here for the generator and online training."""

    original_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Temperature of y_o (no principle). Default: `temperature`.",
            "range": Range(0, 2, low_open=True),
        },
    )
    principle_source: str = field(
        default="library",
        metadata={
            "help": "Where principles come from: 'library' (drawn per prompt), 'policy' (the policy, as it is at "
            "that generation, picks the features) or 'model' (`principle_model` writes a guideline pair per query).",
            "choices": ["library", "policy", "model"],
        },
    )
    principle_placement: str = field(
        default=DEFAULT_GENERATION_PLACEMENT,
        metadata={
            "help": "Where the principle goes in x+ and x-: 'system' (the system message), 'before_question' or "
            "'after_question' (in the user turn). Recorded in each record, so training rebuilds x+ / x- alike. "
            "`trl-sso calibrate` measures which placement your model follows.",
            "choices": list(PLACEMENTS),
        },
    )
    principle_model: str | None = field(
        default=None, metadata={"help": "Model that writes the guideline pair per query (principle_source 'model')."}
    )
    principle_model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of `principle_model`."}
    )
    policy_writes_principles: bool = field(
        default=False,
        metadata={"help": "With principle_source 'policy', let the policy also write the principle texts."},
    )
    features_file: str | None = field(
        default=None, metadata={"help": "YAML/JSON file of features that add to or replace the library's."}
    )
    features: list[str] | None = field(
        default=None,
        metadata={
            "help": "Features to draw from, or a set: 'verifiable' or 'qualitative' (default: the qualitative "
            "features but Concision)."
        },
    )
    num_features: int = field(default=2, metadata={"help": "Features per query.", "range": AT_LEAST_1})
    concision_prob: float = field(
        default=0.2, metadata={"help": "Probability of adding Concision as a length control.", "range": PROBABILITY}
    )
    min_response_chars: int = field(
        default=2,
        metadata={
            "help": "Drop triples with a response shorter than this (after stripping labels).",
            "range": AT_LEAST_0,
        },
    )
    drop_truncated: bool = field(
        default=False,
        metadata={
            "help": "Drop triples with a response that hit max_completion_length without an end-of-sequence token."
        },
    )
    drop_revealing: bool = field(
        default=True, metadata={"help": "Drop triples whose chosen or rejected response mentions the guidelines."}
    )

    def _check_triples(self) -> None:
        if self.principle_placement not in PLACEMENTS:
            raise ValueError(
                f"`principle_placement` must be one of {list(PLACEMENTS)}, got {self.principle_placement!r}. "
                "`trl-sso calibrate` measures which one your model follows."
            )
        if self.principle_source == "model" and not self.principle_model:
            raise ValueError(
                "`principle_source='model'` needs `principle_model`, the model that writes the guidelines."
            )


@dataclass
class VLLMOptions:
    """Sampling with vLLM (GPUs), under the option names of TRL's online trainers; every command that samples and
    `OnlineSSOTrainer` read them through `trl_sso.generation.vllm` (TRL's `VLLMGeneration`)."""

    use_vllm: bool = field(
        default=False,
        metadata={"help": "Sample with vLLM (GPU, `pip install trl-sso[vllm]`) instead of transformers' `generate`."},
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "'colocate': a vLLM engine in each process (per tensor-parallel group), on the training GPUs; "
            "'server': a `trl vllm-serve` / `vllm serve` server at `vllm_server_base_url`, which receives the "
            "policy's weights when they change.",
            "choices": ["colocate", "server"],
        },
    )
    vllm_server_base_url: str | None = field(
        default=None,
        metadata={
            "help": "Base URL of the vLLM server (server mode). Default: port 8000 of this machine (TRL's).",
            "affects_data": False,
        },
    )
    vllm_server_timeout: float = field(
        default=240.0,
        metadata={
            "help": "Seconds to wait for the vLLM server to answer its health check.",
            "range": AT_LEAST_0,
            "affects_data": False,
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "Share of GPU memory the colocated engine reserves (weights and KV cache).",
            "range": Range(0, 1, low_open=True),
            "affects_data": False,
        },
    )
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={
            "help": "GPUs each colocated engine spans; must divide the number of processes.",
            "range": AT_LEAST_1,
        },
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={"help": "Context length of the colocated engine. Default: the model's.", "affects_data": False},
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={
            "help": "Put the colocated engine to sleep between its calls, as TRL does (weights and KV cache freed; "
            "the policy's weights are loaded again before the next call), instead of keeping it (online training) "
            "or deleting it before each training (`iterate`, `pipeline`).",
            "affects_data": False,
        },
    )

    def _check_vllm(self):
        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"`vllm_mode` must be 'colocate' or 'server', got {self.vllm_mode!r}.")


@dataclass
class GenerationOptions(SamplingOptions, TripleOptions, VLLMOptions):
    """What the generator samples and keeps: the prompt set, the sampling settings (`SamplingOptions`), the
    principles and filters (`TripleOptions`), vLLM (`VLLMOptions`), batching and the log-prob filter.

    Parameters:
        prompts (`str`, *optional*): prompt set: a file (JSON, JSONL, CSV, Parquet), a saved dataset folder or a
            dataset name. Defaults to the packaged 200 prompts.
    """

    prompts: str | None = field(
        default=None,
        metadata={
            "help": "Prompt file (json/jsonl/csv/parquet), saved dataset folder or dataset name. Default: the "
            "packaged 200 prompts."
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column of the prompt set that holds the prompts."})
    prompt_split: str = field(default="train", metadata={"help": "Split of a dataset prompt set."})
    num_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    batch_size: int = field(
        default=8, metadata={"help": "Prompts per batch; each batch is generated and saved as a unit."}
    )
    logprob_filter: bool = field(
        default=False,
        metadata={"help": "Keep only triples that pass the log-probability filter."},
    )
    backend: str | None = field(
        default=None,
        metadata={
            "help": "Deprecated (removed in trl-sso 0.2): use `use_vllm`.",
            "choices": ["transformers", "vllm"],
            "affects_data": False,
        },
    )
    max_new_tokens: int | None = deprecated("max_completion_length")

    def __post_init__(self):
        self._take_backend()
        take_deprecated(self)
        self._check_sampling()
        check_ranges(self)  # sampling, counts and probabilities (each field's "range", `trl_sso.options.RANGES`)
        self._check_triples()
        self._check_vllm()

    def _take_backend(self):
        """`backend` of trl-sso 0.1.0, kept until 0.2 with a warning: `use_vllm` replaced it."""
        if self.backend is None:
            return
        if self.backend not in ("transformers", "vllm"):
            raise ValueError(f"`backend` must be 'transformers' or 'vllm', got {self.backend!r}.")
        warnings.warn(
            f"`backend={self.backend!r}` is deprecated and will be removed in trl-sso 0.2; use "
            f"`use_vllm={self.backend == 'vllm'}` instead.",
            FutureWarning,
            stacklevel=4,
        )
        self.use_vllm, self.backend = self.backend == "vllm", None


def _json_mapping(text: str) -> dict:
    """`generation_kwargs` given on the command line: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(
            f"`generation_kwargs` must be a JSON object such as '{{\"repetition_penalty\": 1.1}}', got {text!r}."
        )
    return value


@dataclass
class GenerateArguments(GenerationOptions):
    """Options of `trl_sso.generation.generate` and `trl-sso generate`: the `GenerationOptions`, the policy that
    samples (under the names of TRL's `ModelConfig`), the output folder and the provenance of the data.

    Parameters:
        model_name_or_path (`str`, *optional*): policy that samples the responses (path or Hub id). Defaults to the
            packaged SmolLM2-135M-Instruct, so that generation runs offline.
        output_dir (`str`): where the dataset, its summary and the per-batch results are written.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Policy model (path or Hub id). Default: the packaged SmolLM2-135M-Instruct."},
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "Specific model version to use. It can be a branch name, a tag name, or a commit id."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Whether to trust remote code when loading the model and tokenizer."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Model dtype ('auto' loads the checkpoint's, except float32 on a CPU).",
            "choices": list(DTYPES),
        },
    )
    model_name: str | None = field(
        default=None,
        metadata={"help": "Name recorded as the generator model in the data and its card. Default: the model."},
    )
    output_dir: str = field(
        default="sso-data",
        metadata={"help": "Output folder (dataset, summary.json, per-batch results).", "affects_data": False},
    )
    seed: int = field(default=42, metadata={"help": "Seed of principle selection and sampling."})
    iteration: int = field(default=1, metadata={"help": "Online round this data belongs to (recorded as provenance)."})
    judge: str | None = field(
        default=None,
        metadata={
            "help": "Also judge y+ against y- in the summary (both orders; `trl_sso.signal.judge`): a causal LM (path "
            "or Hub id) or the URL of an OpenAI-compatible endpoint. Does not change the data.",
            "affects_data": False,
        },
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "The model an endpoint `--judge` serves, when it serves several.", "affects_data": False},
    )
    judge_timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds an endpoint `--judge` may take to answer one question; a time-out is retried twice, "
            "then the run stops with one line.",
            "affects_data": False,
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {list(DTYPES)}, got {self.dtype!r}.")
