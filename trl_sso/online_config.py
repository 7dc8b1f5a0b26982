"""`OnlineSSOConfig`: the training arguments of `OnlineSSOTrainer`, an `SSOConfig` with the sampling, principle and
filter settings of the generator under TRL's names (those of `GRPOConfig` where it has them)."""

from dataclasses import dataclass, field

from .config import SSOConfig
from .generation.arguments import DEFAULT_GENERATION_PLACEMENT, GenerationOptions, VLLMOptions
from .principles import expand_feature_names, known_features


@dataclass
class OnlineSSOConfig(SSOConfig, VLLMOptions):
    r"""
    Configuration class for the [`OnlineSSOTrainer`]: SSO on triples (y+, y-, y_o) sampled from the current policy
    during training. Every [`SSOConfig`] field applies; these set how the triples are sampled:

    Parameters:
        max_completion_length (`int`, *optional*, defaults to `128`):
            Maximum new tokens of each response.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of y+ and y-; `sso_original_temperature` sets y_o's (default: the same).
        top_p (`float`, *optional*, defaults to `0.8`):
            Nucleus sampling threshold.
        steps_per_generation (`int` or `None`, *optional*, defaults to `None`):
            Micro-steps whose prompts are sampled in one generation, as in `GRPOConfig`: the kept triples are then
            trained on over that many micro-steps. Default: `gradient_accumulation_steps` (one generation per
            optimizer step).
        generation_kwargs (`dict` or `None`, *optional*):
            More keyword arguments of transformers' `generate`. A key that trl-sso also sets (temperature, top_p,
            top_k, do_sample, the token limit) takes the value given here.
        sso_features (`list[str]` or `None`, *optional*):
            Features the principles are drawn from, or a set (`verifiable`, `qualitative`), as in `trl-sso generate`.
        sso_features_file (`str` or `None`, *optional*):
            YAML/JSON file of features that add to or replace the library's.
        sso_num_features (`int`, *optional*, defaults to `2`):
            Features per query.
        sso_concision_prob (`float`, *optional*, defaults to `0.2`):
            Probability of adding Concision as a length control.
        sso_principle_source (`str`, *optional*, defaults to `"library"`):
            Where principles come from, as in the generator: `"library"`, `"policy"` (the policy as it is at each
            generation picks the features, and with `sso_policy_writes_principles` writes their texts) or `"model"`
            (`sso_principle_model` writes a guideline pair per query).
        sso_min_response_chars, sso_drop_truncated, sso_drop_revealing:
            The generator's filters (`min_response_chars`, `drop_truncated`, `drop_revealing`).
        use_vllm, vllm_mode, vllm_server_base_url, vllm_server_timeout, vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size, vllm_max_model_length, vllm_enable_sleep_mode:
            Sampling with TRL's `VLLMGeneration` on GPUs, as `GRPOConfig` names these options; the policy's weights
            are synced to the engine (or server) before each generation that follows an optimizer step.

    The principle goes where `sso_principle_placement` says (default: the generator's, after the question). The
    reference model is the frozen starting policy (or TRL's `sync_ref_model`), so `precompute_ref_log_probs` must stay
    off: the triples do not exist before training.
    """

    max_completion_length: int = field(default=128, metadata={"help": "Maximum new tokens of each response."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of y+ and y-."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling threshold."})
    steps_per_generation: int | None = field(
        default=None,
        metadata={
            "help": "Micro-steps whose prompts are sampled at once (default: gradient_accumulation_steps), as in "
            "GRPOConfig."
        },
    )
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "More keyword arguments of transformers' `generate`, as a JSON mapping. A key that trl-sso also "
            "sets (temperature, top_p, top_k, do_sample, the token limit) takes the value given here."
        },
    )
    sso_original_temperature: float | None = field(
        default=None, metadata={"help": "Temperature of y_o (no principle). Default: `temperature`."}
    )
    sso_features: list[str] | None = field(
        default=None,
        metadata={"help": "Features to draw principles from, or a set: 'verifiable' or 'qualitative'."},
    )
    sso_features_file: str | None = field(
        default=None, metadata={"help": "YAML/JSON file of features that add to or replace the library's."}
    )
    sso_num_features: int = field(default=2, metadata={"help": "Features per query."})
    sso_principle_source: str = field(
        default="library",
        metadata={
            "help": "Where principles come from: 'library' (drawn per prompt), 'policy' (the policy picks the "
            "features, as it is at each generation) or 'model' (`sso_principle_model` writes a guideline pair).",
            "choices": ["library", "policy", "model"],
        },
    )
    sso_principle_model: str | None = field(
        default=None, metadata={"help": "Model that writes the guideline pair per query (principle source 'model')."}
    )
    sso_policy_writes_principles: bool = field(
        default=False,
        metadata={"help": "With principle source 'policy', let the policy also write the principle texts."},
    )
    sso_concision_prob: float = field(
        default=0.2, metadata={"help": "Probability of adding Concision as a length control."}
    )
    sso_min_response_chars: int = field(
        default=2, metadata={"help": "Drop triples with a response shorter than this (after stripping labels)."}
    )
    sso_drop_truncated: bool = field(
        default=False, metadata={"help": "Drop triples with a response cut at max_completion_length."}
    )
    sso_drop_revealing: bool = field(
        default=True, metadata={"help": "Drop triples whose chosen or rejected response mentions the guidelines."}
    )

    def __post_init__(self):
        if self.precompute_ref_log_probs:
            raise ValueError(
                "`precompute_ref_log_probs=True` cannot work with OnlineSSOTrainer: the triples are sampled during "
                "training, so there is nothing to precompute. Leave it off."
            )
        if self.sso_principle_placement is None:
            self.sso_principle_placement = DEFAULT_GENERATION_PLACEMENT
        super().__post_init__()
        if self.steps_per_generation is None:
            self.steps_per_generation = self.gradient_accumulation_steps
        if self.steps_per_generation < 1:
            raise ValueError(f"`steps_per_generation` must be at least 1, got {self.steps_per_generation}.")
        self.generation_options()  # checks the sampling, principle and filter settings now
        if self.sso_features:
            expand_feature_names(self.sso_features, known_features(self.sso_features_file))  # unknown names: an error

    def generation_options(self) -> GenerationOptions:
        """These settings as the generator's options (`sample_triples` reads them)."""
        return GenerationOptions(
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            original_temperature=self.sso_original_temperature,
            generation_kwargs=self.generation_kwargs,
            principle_placement=self.sso_principle_placement,
            features=self.sso_features,
            features_file=self.sso_features_file,
            num_features=self.sso_num_features,
            concision_prob=self.sso_concision_prob,
            principle_source=self.sso_principle_source,
            principle_model=self.sso_principle_model,
            policy_writes_principles=self.sso_policy_writes_principles,
            min_response_chars=self.sso_min_response_chars,
            drop_truncated=self.sso_drop_truncated,
            drop_revealing=self.sso_drop_revealing,
            **{name: getattr(self, name) for name in VLLMOptions.__dataclass_fields__},
        )
