"""The options of the SSO data generator (light: no heavy imports, so `trl-sso generate --help` answers at once).

- `GenerationOptions`: what to generate and how: the prompt set, sampling, principles and filters. `trl-sso iterate`
  and `trl-sso pipeline` take these and set the rest themselves.
- `GenerateArguments`: those plus the model (under TRL's `ModelConfig` names), the output folder and the provenance
  of the data: everything `trl_sso.generation.generate` and `trl-sso generate` take.
"""

import json
import warnings
from dataclasses import dataclass, field

from ..data import PLACEMENTS
from ..options import check_ranges


DTYPES = ("auto", "bfloat16", "float16", "float32")  # as TRL's `ModelConfig.dtype`
DEFAULT_GENERATION_PLACEMENT = "after_question"  # chosen by `trl-sso calibrate` on the packaged model (README)


@dataclass
class VLLMOptions:
    """Sampling with vLLM (GPUs), under the option names of TRL's online trainers; read by the generator
    (`trl_sso.generation.vllm`) and by `OnlineSSOTrainer` (TRL's `VLLMGeneration`)."""

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
        default=None, metadata={"help": "Base URL of the vLLM server (server mode). Default: http://127.0.0.1:8000."}
    )
    vllm_server_timeout: float = field(
        default=240.0, metadata={"help": "Seconds to wait for the vLLM server to answer its health check."}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "Share of GPU memory the colocated engine reserves (weights and KV cache)."}
    )
    vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "GPUs each colocated engine spans; must divide the number of processes."}
    )
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "Context length of the colocated engine. Default: the model's."}
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={
            "help": "Put the colocated engine to sleep while the policy trains (weights offloaded, KV cache freed) "
            "instead of keeping it (online training) or deleting it (between the rounds of `iterate`)."
        },
    )

    def _check_vllm(self):
        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"`vllm_mode` must be 'colocate' or 'server', got {self.vllm_mode!r}.")


@dataclass
class GenerationOptions(VLLMOptions):
    """What the generator samples and keeps: the prompt set, the sampling settings, the principles and the filters.

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
    max_completion_length: int = field(
        default=256, metadata={"help": "Maximum new tokens per response (the paper uses 2048)."}
    )
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "More sampling settings, as a JSON mapping: keyword arguments of transformers' `generate`, or of "
            "vLLM's `SamplingParams` with `use_vllm` (as TRL's online trainers take them). A key that trl-sso also "
            "sets (temperature, top_p, top_k, do_sample, the token limit) takes the value given here."
        },
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of y+ and y-."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling threshold."})
    original_temperature: float | None = field(
        default=None, metadata={"help": "Temperature of y_o (no principle). Default: `temperature`."}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Prompts per batch; each batch is generated and saved as a unit."}
    )
    principle_source: str = field(
        default="library",
        metadata={
            "help": "Where principles come from: 'library', 'policy' or 'model'.",
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
    num_features: int = field(default=2, metadata={"help": "Features per query."})
    concision_prob: float = field(
        default=0.2, metadata={"help": "Probability of adding Concision as a length control."}
    )
    min_response_chars: int = field(
        default=2, metadata={"help": "Drop triples with a response shorter than this (after stripping labels)."}
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
    logprob_filter: bool = field(
        default=False,
        metadata={"help": "Keep only triples that pass the log-probability filter."},
    )
    backend: str | None = field(
        default=None,
        metadata={"help": "Deprecated (removed in trl-sso 0.2): use `use_vllm`.", "choices": ["transformers", "vllm"]},
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Deprecated (removed in trl-sso 0.2): use `max_completion_length`."}
    )

    def __post_init__(self):
        self._take_deprecated()
        if isinstance(self.generation_kwargs, str):
            self.generation_kwargs = _json_mapping(self.generation_kwargs)
        check_ranges(self)  # sampling, counts and probabilities (`trl_sso.options.RANGES`)
        if self.principle_placement not in PLACEMENTS:
            raise ValueError(
                f"`principle_placement` must be one of {list(PLACEMENTS)}, got {self.principle_placement!r}. "
                "`trl-sso calibrate` measures which one your model follows."
            )
        if self.principle_source == "model" and not self.principle_model:
            raise ValueError(
                "`principle_source='model'` needs `principle_model`, the model that writes the guidelines."
            )
        self._check_vllm()

    def _take_deprecated(self):
        """The names of trl-sso 0.1.0, kept until 0.2 with a warning: `backend` and `max_new_tokens`."""
        if self.backend is not None:
            if self.backend not in ("transformers", "vllm"):
                raise ValueError(f"`backend` must be 'transformers' or 'vllm', got {self.backend!r}.")
            warnings.warn(
                f"`backend={self.backend!r}` is deprecated and will be removed in trl-sso 0.2; use "
                f"`use_vllm={self.backend == 'vllm'}` instead.",
                FutureWarning,
                stacklevel=4,
            )
            self.use_vllm, self.backend = self.backend == "vllm", None
        if self.max_new_tokens is not None:
            warnings.warn(
                "`max_new_tokens` is deprecated and will be removed in trl-sso 0.2; use `max_completion_length` "
                "(TRL's name) instead.",
                FutureWarning,
                stacklevel=4,
            )
            self.max_completion_length, self.max_new_tokens = self.max_new_tokens, None


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
        default="sso-data", metadata={"help": "Output folder (dataset, summary.json, per-batch results)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of principle selection and sampling."})
    iteration: int = field(default=1, metadata={"help": "Online round this data belongs to (recorded as provenance)."})
    judge: str | None = field(
        default=None,
        metadata={
            "help": "Also judge y+ against y- in the summary (both orders; `trl_sso.signal.judge`): a causal LM (path "
            "or Hub id) or the URL of an OpenAI-compatible endpoint. Does not change the data."
        },
    )
    judge_model: str | None = field(
        default=None, metadata={"help": "The model an endpoint `--judge` serves, when it serves several."}
    )
    judge_timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds an endpoint `--judge` may take to answer one question; a time-out is retried twice, "
            "then the run stops with one line."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {list(DTYPES)}, got {self.dtype!r}.")
