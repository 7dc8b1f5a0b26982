"""The options of the SSO data generator (light: no heavy imports, so `trl-sso generate --help` answers at once).

- `GenerationOptions`: what to generate and how: the prompt set, sampling, principles and filters. `trl-sso iterate`
  and `trl-sso pipeline` take these and set the rest themselves.
- `GenerateArguments`: those plus the model (under TRL's `ModelConfig` names), the output folder and the provenance
  of the data: everything `trl_sso.generation.generate` and `trl-sso generate` take.
"""

from dataclasses import dataclass, field

from ..data import PLACEMENTS
from ..options import check_ranges


DTYPES = ("auto", "bfloat16", "float16", "float32")  # as TRL's `ModelConfig.dtype`
DEFAULT_GENERATION_PLACEMENT = "after_question"  # chosen by `trl-sso calibrate` on the packaged model (README)


@dataclass
class GenerationOptions:
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
    max_new_tokens: int = field(
        default=256, metadata={"help": "Maximum new tokens per response (the paper uses 2048)."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of y+ and y-."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling threshold."})
    original_temperature: float | None = field(
        default=None, metadata={"help": "Temperature of y_o (no principle). Default: `temperature`."}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Prompts per batch; each batch is generated and saved as a unit."}
    )
    backend: str = field(
        default="transformers",
        metadata={
            "help": "Sampling backend: 'transformers' or 'vllm' (GPU, needs vllm).",
            "choices": ["transformers", "vllm"],
        },
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
        metadata={"help": "Drop triples with a response that hit max_new_tokens without an end-of-sequence token."},
    )
    drop_revealing: bool = field(
        default=True, metadata={"help": "Drop triples whose chosen or rejected response mentions the guidelines."}
    )
    logprob_filter: bool = field(
        default=False,
        metadata={"help": "Keep only triples that pass the log-probability filter (transformers backend)."},
    )

    def __post_init__(self):
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
        if self.logprob_filter and self.backend != "transformers":
            raise ValueError(
                "`logprob_filter` scores responses with the transformers backend; use `backend='transformers'`."
            )


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

    def __post_init__(self):
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {list(DTYPES)}, got {self.dtype!r}.")
