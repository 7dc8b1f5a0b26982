"""`OnlineSSOConfig`: the training arguments of `OnlineSSOTrainer`, an `SSOConfig` that inherits the generator's
sampling, principle and filter options (`trl_sso.generation.arguments`) under the same names, those of `GRPOConfig`
where it has them."""

import warnings
from dataclasses import dataclass, field, fields

from .config import SSOConfig
from .generation.arguments import (
    GenerationOptions,
    SamplingOptions,
    TripleOptions,
    VLLMOptions,
    deprecated,
    redefault,
    take_deprecated,
)
from .principles import expand_feature_names, known_features


@dataclass
class OnlineSSOConfig(SSOConfig, SamplingOptions, TripleOptions, VLLMOptions):
    r"""
    Configuration class for the [`OnlineSSOTrainer`]: SSO on triples (y+, y-, y_o) sampled from the current policy
    during training. Every [`SSOConfig`] field applies; the sampling, principle and filter options are the
    generator's, under the same names and with the same defaults (`trl-sso generate --help` lists them), but one:

    Parameters:
        max_completion_length (`int`, *optional*, defaults to `128`):
            Maximum new tokens of each response (the generator's default is 256).
        steps_per_generation (`int` or `None`, *optional*, defaults to `None`):
            Micro-steps whose prompts are sampled in one generation, as in `GRPOConfig`: the kept triples are then
            trained on over that many micro-steps. Default: `gradient_accumulation_steps` (one generation per
            optimizer step).
        temperature, top_p, repetition_penalty, generation_kwargs:
            Sampling (`SamplingOptions`).
        original_temperature, features, features_file, num_features, concision_prob, principle_source,
        principle_model, policy_writes_principles, principle_placement, min_response_chars, drop_truncated,
        drop_revealing:
            The principles, where they go, and the filters (`TripleOptions`). With `principle_source="policy"` the
            policy as it is at each generation picks the features.
        use_vllm, vllm_mode, vllm_server_base_url, vllm_server_timeout, vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size, vllm_max_model_length, vllm_enable_sleep_mode:
            Sampling with TRL's `VLLMGeneration` on GPUs, as `GRPOConfig` names these options; the policy's weights
            are synced to the engine (or server) before each generation that follows an optimizer step.

    The records carry their placement (`principle_placement`), so `sso_principle_placement`, which training reads only
    for data without it, must agree or stay unset. The reference model is the frozen starting policy (or TRL's
    `sync_ref_model`), so `precompute_ref_log_probs` must stay off: the triples do not exist before training. The
    `sso_`-prefixed spellings of trl-sso 0.1 (`sso_features`, ...) still work until 0.2, with a FutureWarning.
    """

    # a triple is trained on as soon as it is sampled: shorter responses keep each step's generation short
    max_completion_length: int = redefault(SamplingOptions, "max_completion_length", 128)
    steps_per_generation: int | None = field(
        default=None,
        metadata={
            "help": "Micro-steps whose prompts are sampled at once (default: gradient_accumulation_steps), as in "
            "GRPOConfig."
        },
    )
    sso_original_temperature: float | None = deprecated("original_temperature")
    sso_features: list[str] | None = deprecated("features")
    sso_features_file: str | None = deprecated("features_file")
    sso_num_features: int | None = deprecated("num_features")
    sso_principle_source: str | None = deprecated("principle_source")
    sso_principle_model: str | None = deprecated("principle_model")
    sso_policy_writes_principles: bool | None = deprecated("policy_writes_principles")
    sso_concision_prob: float | None = deprecated("concision_prob")
    sso_min_response_chars: int | None = deprecated("min_response_chars")
    sso_drop_truncated: bool | None = deprecated("drop_truncated")
    sso_drop_revealing: bool | None = deprecated("drop_revealing")

    def __post_init__(self):
        if self.precompute_ref_log_probs:
            raise ValueError(
                "`precompute_ref_log_probs=True` cannot work with OnlineSSOTrainer: the triples are sampled during "
                "training, so there is nothing to precompute. Leave it off."
            )
        take_deprecated(self)
        self._take_placement()
        super().__post_init__()
        if self.steps_per_generation is None:
            self.steps_per_generation = self.gradient_accumulation_steps
        if self.steps_per_generation < 1:
            raise ValueError(f"`steps_per_generation` must be at least 1, got {self.steps_per_generation}.")
        self.generation_options()  # checks the sampling, principle and filter settings now, under their own names
        if self.features:
            expand_feature_names(self.features, known_features(self.features_file))  # unknown names: an error

    def _take_placement(self) -> None:
        """`sso_principle_placement` named the sampling placement in trl-sso 0.1; `principle_placement` does now (the
        records carry it, and training follows the records). The old name alone still works until 0.2."""
        old, default = self.sso_principle_placement, TripleOptions.__dataclass_fields__["principle_placement"].default
        if old is None or old == self.principle_placement:
            return
        if self.principle_placement != default:
            raise ValueError(
                f"`sso_principle_placement={old!r}` differs from `principle_placement={self.principle_placement!r}`, "
                "where the principle of the sampled triples goes (recorded in each record, which training follows). "
                "Set `principle_placement` only."
            )
        warnings.warn(
            "`sso_principle_placement` sets where the sampled principle goes only until trl-sso 0.2; use "
            "`principle_placement` instead.",
            FutureWarning,
            stacklevel=4,
        )
        self.principle_placement = old

    def generation_options(self) -> GenerationOptions:
        """These settings as the generator's options (`sample_triples` reads them): every field the two share."""
        shared = {f.name for f in fields(GenerationOptions) if not f.metadata.get("deprecated_for")}
        return GenerationOptions(**{f.name: getattr(self, f.name) for f in fields(self) if f.name in shared})
