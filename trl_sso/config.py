"""`SSOConfig`: the training arguments of the `SSOTrainer`, a `DPOConfig` with the Self-Steering Optimization
fields."""

import copy
import dataclasses
import logging
from dataclasses import dataclass, field

from trl import DPOConfig

from .data import PLACEMENTS
from .hub_token import TokenFreePickle
from .loss import BASE_LOSS_TYPES, SORTING_LOSS_TYPES
from .options import check_ranges
from .runtime import accelerator_available, bf16_available


logger = logging.getLogger(__name__)

SSO_OBJECTIVES = ("policy", "generator")
_DEFAULT_SFT_COEF = {"policy": 0.0, "generator": 0.1}

# What SSOTrainer does with each field that DPOConfig declares (or whose default it changes), and with the fields of
# `TrainingArguments` whose meaning DPOTrainer changes: "supported" with the test that shows it, or "refused" with
# the reason given when it is set. Every other field is transformers' `Trainer`'s, the same for both trainers.
# `tests/test_dpo_surface.py` fails when TRL adds a field that is not decided here.
DPO_FIELDS = {
    "model_init_kwargs": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    "trust_remote_code": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    "router_aux_loss_coef": ("supported", "test_moe_load_balancing_loss_as_dpo"),
    "disable_dropout": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    "dataset_num_proc": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    "max_length": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    "truncation_mode": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    "padding_free": (
        "refused",
        "TRL 1.16's DPOTrainer has switched it off too (it falls back to padding); SSO's shared-prompt layout "
        "(`sso_share_prompt=True`, the default) removes the repeated prompts instead",
    ),
    "pad_to_multiple_of": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    "precompute_ref_log_probs": ("supported", "test_precomputed_reference_matches_live_reference"),
    "precompute_ref_batch_size": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    "loss_type": ("supported", "test_every_base_loss_equals_dpo"),
    "loss_weights": ("supported", "test_every_base_loss_equals_dpo"),
    "ld_alpha": ("supported", "test_every_base_loss_equals_dpo"),
    "f_divergence_type": ("supported", "test_every_base_loss_equals_dpo"),
    "f_alpha_divergence_coef": ("supported", "test_every_base_loss_equals_dpo"),
    "label_smoothing": ("supported", "test_every_base_loss_equals_dpo"),
    "beta": ("supported", "test_every_base_loss_equals_dpo"),
    "use_weighting": ("supported", "test_every_base_loss_equals_dpo"),
    "discopop_tau": ("supported", "test_every_base_loss_equals_dpo"),
    "activation_offloading": ("supported", "test_activation_offloading_wraps_every_pass"),
    "sync_ref_model": ("supported", "test_sync_ref_model_copies_the_policy_into_the_reference"),
    "ref_model_mixup_alpha": ("supported", "test_sync_ref_model_copies_the_policy_into_the_reference"),
    "ref_model_sync_steps": ("supported", "test_sync_ref_model_copies_the_policy_into_the_reference"),
    "pad_token": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    # fields of `TrainingArguments` whose default DPOConfig changes
    "learning_rate": ("supported", "test_training_reduces_the_loss"),
    "bf16": ("supported", "test_bf16_falls_back_to_fp32_on_cpu_with_a_warning"),
    "gradient_checkpointing": ("supported", "test_checkpointing_keeps_losses_and_gradients"),
    "logging_steps": ("supported", "test_a_dpo_field_trains_as_in_dpo"),
    # fields of `TrainingArguments` that DPOTrainer reads in its own way
    "use_liger_kernel": (
        "refused",
        "TRL deprecates it (use `model_init_kwargs={'use_kernels': True}` for Hub kernels), and Liger's layer kernels "
        "are not tested with SSO's shared-prompt mask",
    ),
    "liger_kernel_config": ("refused", "it only applies with `use_liger_kernel`, which SSO refuses"),
}


def settle_device_and_precision(args) -> None:
    """CPU-friendly defaults for TRL training arguments, applied before their own `__post_init__`.

    - bf16: TRL turns it on whenever fp16 is off. Where no accelerator supports it, transformers either refuses (no
      `use_cpu`) or emulates it several times slower than fp32, so fall back to fp32 with a warning unless it was
      asked for, and explain the fix when it was.
    - use_cpu: on a machine with no accelerator at all, set it, so that `accelerate launch` with several processes
      forms a real (gloo) process group instead of running independent copies.
    """
    if not args.use_cpu and not accelerator_available():
        args.use_cpu = True
    if args.bf16 is None and not args.fp16 and not bf16_available():
        logger.warning(
            f"No accelerator with bf16 support was found, so {type(args).__name__} trains in fp32 (`bf16=False`). "
            "Pass `bf16=True` explicitly (with `use_cpu=True` on a CPU) to emulate bf16 anyway; it is much slower."
        )
        args.bf16 = False
    if args.bf16 and args.use_cpu:
        logger.warning(
            "`bf16=True` on the CPU is emulated and several times slower than fp32; `bf16=False` is faster."
        )
    elif args.bf16 and not bf16_available():
        raise ValueError(
            "`bf16=True` was set, but this machine has no accelerator that supports bf16. Set `bf16=False` to "
            "train in fp32, or add `use_cpu=True` to emulate bf16 on the CPU (several times slower)."
        )


@dataclass
class SSOConfig(TokenFreePickle, DPOConfig):
    r"""
    Configuration class for the [`SSOTrainer`].

    Self-Steering Optimization ([SSO](https://huggingface.co/papers/2410.17131)) learns from three preference pairs
    built from one query `x`, a positive and a negative principle prompt (`x+`, `x-`) and three responses sampled from
    the policy (`y+` under `x+`, `y-` under `x-`, `y_o` under `x`):

    | pair           | prompt | winner | loser |
    |----------------|--------|--------|-------|
    | main           | `x`    | `y+`   | `y-`  |
    | positive steer | `x+`   | `y+`   | `y-`  |
    | negative steer | `x-`   | `y_o`  | `y+`  |

    This class only holds the SSO parameters; every [`~trl.DPOConfig`] and [`~transformers.TrainingArguments`] field
    is available too.

    Parameters:
        > Parameters that control the SSO objective

        sso_objective (`str`, *optional*, defaults to `"policy"`):
            Which objective to train. `"policy"` (paper v1) trains the policy online on the main pair plus the
            weighted steering pairs. `"generator"` (paper v2) trains a data generator on the two steering pairs only;
            the main pair is never forwarded. `sso_steer_coef`, `sso_use_weight`, `sso_weight_alpha` and
            `sso_detach_weight` only apply to `"policy"`.
        sso_steer_coef (`float`, *optional*, defaults to `0.1`):
            Coefficient `c` of the two steering pairs in the `"policy"` objective. `0.0` turns steering off: the
            steering pairs are then neither tokenized nor forwarded, and the dataset only needs `prompt`, `chosen` and
            `rejected`.
        sso_use_weight (`bool`, *optional*, defaults to `True`):
            Whether to scale the steering loss by the weight `W = sigmoid(-(a * A(x, y+) + (1 - a) * A(x, y-)))`,
            where `A` is the token-mean log-probability of a response under the plain prompt. `W` is close to 1 for
            pairs the policy finds unlikely (off-policy) and close to 0.5 for likely ones.
        sso_weight_alpha (`float`, *optional*, defaults to `0.5`):
            Share `a` of the chosen response in `W`, in `[0, 1]`. The authors' script uses `0.66`.
        sso_detach_weight (`bool`, *optional*, defaults to `False`):
            Whether to stop gradients through `W`. The reference implementation lets them flow.
        sso_sft_coef (`float`, *optional*):
            Coefficient `gamma` of the negative log-likelihood (SFT) terms on the winners. `None` picks the paper's
            value for the objective: `0.0` for `"policy"` and `0.1` for `"generator"`.

        > Parameters that control how the loss is backpropagated

        sso_backward_per_pair (`bool`, *optional*, defaults to `True`):
            Whether to backpropagate each pair as soon as it is forwarded, instead of keeping the graphs of all pairs
            alive until one backward pass. The gradient is the same: the objective is a sum of per-pair terms that
            meet only through `W`, a function of the main pair. The activations of at most two pairs are alive at
            once instead of three (one when `W` carries no gradient). Applies to single-process training only: under
            DDP, FSDP or DeepSpeed, which expect one backward pass per step, the loss is backpropagated once.
        sso_share_prompt (`bool`, *optional*, defaults to `True`):
            Whether to forward each pair as one row per example holding the prompt once and both completions
            (`trl_sso.sharing`), instead of DPO's two rows `[prompt + winner ; prompt + loser]`. The log-probabilities
            are the same; fewer tokens are forwarded, which matters most for the steering pairs, whose prompts carry
            the principle. Models whose attention cannot take the shared-prompt mask (flash attention, unverified
            model types, prompt-learning adapters) keep the two-row layout, with one warning that names the reason.

        sso_share_across_pairs (`bool`, *optional*, defaults to `True`):
            With `sso_share_prompt`, whether to forward each example as one row (`trl_sso.sharing.pack_tree`): the
            common beginning of x, x+ and x- once, each prompt's own tokens, then its two completions; where, in every
            example of a batch, the prompts begin alike for at least half the shortest one (the principle after the
            question; elsewhere one row a pair). The log-probabilities are the same. The whole example is then one
            forward pass, so a training step backpropagates the loss once rather than pair by pair
            (`sso_backward_per_pair` does not apply). On a CPU, SDPA models compute rows of 384 tokens and more
            segment by segment (`trl_sso.segment_attention`), so the longer row does not pay SDPA's dense masked
            square.

        sso_principle_placement (`str` or `None`, *optional*, defaults to `None`):
            Where the principle goes in the steering prompts x+ and x-: `"system"` (the system message),
            `"before_question"` or `"after_question"` (in the user turn). `None` follows the data: each record's
            `principle_placement` column, written by the generator, or the system message where there is none. A
            value that contradicts the data's column is an error, since x+ and x- must be rebuilt as they were sampled.

    > [!NOTE]
    > These parameters have default values different from [`~trl.DPOConfig`]:
    > - `bf16`: when not set, defaults to `True` only on an accelerator that supports it; elsewhere (e.g. a CPU) it
    >   falls back to `False` with a warning, since bf16 emulation there is several times slower than fp32.

    Every loss of DPOTrainer (`loss_type`, also as a list with `loss_weights`), WPO (`use_weighting`), LD-DPO
    (`ld_alpha`) and the f-divergences apply to each of the three pairs as DPOTrainer applies them to its one pair
    (`trl_sso.loss.base_pair_loss`). `DPO_FIELDS` in this module says what SSOTrainer does with every DPOConfig field.
    """

    sso_objective: str = field(
        default="policy",
        metadata={
            "help": "SSO objective: 'policy' (paper v1, main pair plus weighted steering pairs) or 'generator' "
            "(paper v2, steering pairs only, for training a data generator).",
            "choices": list(SSO_OBJECTIVES),
        },
    )
    sso_steer_coef: float = field(
        default=0.1,
        metadata={
            "help": "Coefficient of the two steering pairs in the 'policy' objective. 0 turns steering off and the "
            "steering pairs are not forwarded."
        },
    )
    sso_use_weight: bool = field(
        default=True,
        metadata={"help": "Whether to scale the steering loss by the on-policy weight W ('policy' objective)."},
    )
    sso_weight_alpha: float = field(
        default=0.5,
        metadata={"help": "Share of the chosen response in the weight W, in [0, 1] (the authors' script uses 0.66)."},
    )
    sso_detach_weight: bool = field(
        default=False,
        metadata={"help": "Whether to stop gradients through the weight W."},
    )
    sso_sft_coef: float | None = field(
        default=None,
        metadata={
            "help": "Coefficient of the NLL (SFT) terms on the winners. Defaults to 0.0 for 'policy' and 0.1 for "
            "'generator'."
        },
    )
    sso_backward_per_pair: bool = field(
        default=True,
        metadata={
            "help": "Whether to backpropagate each pair right after its forward pass (same gradient, lower peak "
            "memory). Single-process training only; under DDP, FSDP or DeepSpeed the loss is backpropagated once."
        },
    )

    sso_share_prompt: bool = field(
        default=True,
        metadata={
            "help": "Whether to forward each pair's prompt once for both completions (same log-probabilities, fewer "
            "tokens). Models whose attention cannot take the shared-prompt mask keep DPO's two-row layout."
        },
    )

    sso_share_across_pairs: bool = field(
        default=True,
        metadata={
            "help": "With `sso_share_prompt`, forward each example as one row holding the common beginning of its "
            "pairs' prompts once (the tree layout: same log-probabilities, fewer tokens) where they begin alike for "
            "at least half their length, as with the principle after the question; one row a pair elsewhere."
        },
    )

    sso_principle_placement: str | None = field(
        default=None,
        metadata={
            "help": "Where the principle goes in x+ and x-: 'system', 'before_question' or 'after_question'. Default: "
            "as the data record it (column 'principle_placement'; the system message where there is none).",
            "choices": list(PLACEMENTS),
        },
    )

    def __post_init__(self):
        self._check_sso()
        settle_device_and_precision(self)
        super().__post_init__()

    def for_stage(self, **overrides) -> "SSOConfig":
        """A copy of these arguments for one stage of `trl-sso iterate` or `pipeline`, with `overrides` set and the
        SSO settings resolved and checked again as the constructor does. A stage that changes `sso_objective` without
        setting `sso_sft_coef` gets the new objective's default coefficient: the one configured was for the other
        objective.

        Example:
        ```python
        >>> args = SSOConfig("out", report_to="none")
        >>> args.sso_sft_coef, args.for_stage(sso_objective="generator").sso_sft_coef
        (0.0, 0.1)

        ```
        """
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"{unknown} are not `SSOConfig` fields; a stage can only set fields of its arguments.")
        if overrides.get("sso_objective", self.sso_objective) != self.sso_objective:
            overrides.setdefault("sso_sft_coef", None)  # resolved to the new objective's default below
        stage = copy.deepcopy(self)
        for name, value in overrides.items():
            setattr(stage, name, value)
        stage._check_sso()
        return stage

    def _check_sso(self) -> None:
        """Check the SSO settings and resolve the objective-dependent defaults (`sso_sft_coef`)."""
        if self.sso_principle_placement is not None and self.sso_principle_placement not in PLACEMENTS:
            raise ValueError(
                f"`sso_principle_placement` must be one of {list(PLACEMENTS)} or None, got "
                f"{self.sso_principle_placement!r}. Leave it unset to follow the placement recorded in the data."
            )
        if self.sso_objective not in SSO_OBJECTIVES:
            raise ValueError(
                f"`sso_objective` must be one of {list(SSO_OBJECTIVES)}, got {self.sso_objective!r}. Use 'policy' to "
                "train a policy online (paper v1) or 'generator' to train a data generator (paper v2)."
            )
        check_ranges(self)  # the SSO coefficients, and every number finite (`trl_sso.options`)
        if self.sso_sft_coef is None:
            self.sso_sft_coef = _DEFAULT_SFT_COEF[self.sso_objective]

        loss_type = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        unknown = [name for name in loss_type if name not in BASE_LOSS_TYPES]
        if unknown or not loss_type:
            raise ValueError(
                f"`loss_type` {unknown or loss_type} is no loss of TRL's DPOTrainer: use one of "
                f"{list(BASE_LOSS_TYPES)}, or a list of them with `loss_weights`."
            )
        sorting = sorted(set(loss_type) & set(SORTING_LOSS_TYPES))
        if sorting and self.sso_objective == "policy" and self.sso_use_weight:
            raise ValueError(
                f"`loss_type` {sorting} sorts the examples of a batch, so its per-example losses belong to no "
                "example and SSO's per-example weight W cannot scale them. Set `sso_use_weight=False`, or use "
                "another `loss_type`."
            )
        for name, (decision, reason) in DPO_FIELDS.items():
            default = type(self).__dataclass_fields__[name].default
            if decision == "refused" and getattr(self, name) != default:
                raise ValueError(
                    f"`{name}={getattr(self, name)!r}` is not available with SSOTrainer: {reason}. Leave `{name}` at "
                    f"its default ({default!r})."
                )
