"""The SSO objectives as pure tensor functions (no model, no trainer), following arXiv 2410.17131.

Notation (see `SSOConfig`): `x` the query, `x+` / `x-` the query under the positive / negative principle,
`y+` (chosen), `y-` (rejected), `y_o` (original). For each pair, `L_base(prompt; y_w > y_l)` is one of DPO's losses
against a frozen reference (`base_pair_loss`: every `loss_type` of TRL's DPOTrainer, or a weighted list of them),
`A(prompt, y)` the token-mean log-probability of `y` under the policy and `NLL = -A`.

    policy (v1):    G    = c * [ L_base(x+; y+ > y-) + L_base(x-; y_o > y+) ]
                    W    = sigmoid( -( a * A(x, y+) + (1 - a) * A(x, y-) ) )
                    SFT  = NLL(x, y+) + c * NLL(x+, y+) + c * NLL(x-, y_o)
                    loss = L_base(x; y+ > y-) + W * G + gamma * SFT                  (steering on, c > 0)
                    loss = W * ( L_base(x; y+ > y-) + gamma * NLL(x, y+) )          (steering off, c = 0)
    generator (v2): loss = L_base(x+; y+ > y-) + L_base(x-; y_o > y+) + gamma * [ NLL(x+, y+) + NLL(x-, y_o) ]

With the weight off, `W = 1`. Every equation is per example; the batch loss is the mean over examples.

Both objectives are sums of per-pair shares (`pair_share`), and a steering pair only meets the others through `W`, a
function of the main pair. `SSOTrainer` relies on this to backpropagate each pair on its own: a pair's `pair_share`
(with `W` detached) as soon as it is forwarded; the last pair's gradient (and the one through `W`) then comes from
`sso_loss` with the pairs already backpropagated detached. The gradients add up to the gradient of `sso_loss`.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# Every `loss_type` of TRL 1.16's DPOTrainer, in its order (`tests/test_loss.py` checks the list against its source)
BASE_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
# The losses that compare the two log-ratios through their difference, which an f-divergence may reshape (as in TRL)
F_DIVERGENCE_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
# The losses that sort the examples of a batch: their per-example terms belong to no example
SORTING_LOSS_TYPES = ("aot", "aot_unpaired")
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass
class PairLogps:
    """Summed completion log-probabilities of one preference pair, each of shape `(batch,)`.

    `chosen` is the winner and `rejected` the loser of the pair (for the negative steering pair: `y_o` and `y+`).
    `chosen_tokens` / `rejected_tokens` count the completion tokens, for token means (IPO, `A`, NLL).

    `chosen` / `rejected` and their `ref_*` are the sums the preference loss compares, as TRL's DPOTrainer computes
    them: plain sums, or under LD-DPO (`ld_alpha`) the tokens past the shorter completion's length weighted by
    `ld_alpha`. In that case `plain` holds the policy's plain sums `(winner, loser)`, which `A`, the NLL and the
    `"sft"` loss read. `wpo_weight` is the WPO weight of each example (`use_weighting`, Eq. 2 of arXiv 2406.11827: the
    product of the winner's and the loser's weights, without gradient), or None.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    plain: tuple[torch.Tensor, torch.Tensor] | None = None
    wpo_weight: torch.Tensor | None = None

    @property
    def chosen_logratios(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected

    def detach(self) -> "PairLogps":
        """The same pair cut from the graph: its values without gradients."""
        return PairLogps(
            *(t.detach() for t in (self.chosen, self.rejected, self.ref_chosen, self.ref_rejected)),
            self.chosen_tokens,
            self.rejected_tokens,
            None if self.plain is None else tuple(t.detach() for t in self.plain),
            self.wpo_weight,
        )

    def plain_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's plain summed log-probabilities `(winner, loser)`."""
        return self.plain if self.plain is not None else (self.chosen, self.rejected)

    def chosen_mean_logp(self) -> torch.Tensor:
        """`A(prompt, winner)`: token-mean log-probability of the winner under the policy."""
        return self.plain_sums()[0] / self.chosen_tokens.clamp(min=1)

    def rejected_mean_logp(self) -> torch.Tensor:
        """`A(prompt, loser)`: token-mean log-probability of the loser under the policy."""
        return self.plain_sums()[1] / self.rejected_tokens.clamp(min=1)


@dataclass(frozen=True)
class BaseLoss:
    """The settings of `L_base`, named and defaulted as in TRL's `DPOConfig`: `loss_type` (one name or a list, with
    `loss_weights`), `beta`, `label_smoothing` (robust, exo_pair, aot), `discopop_tau`, and the f-divergence that
    reshapes the log-ratios (`f_divergence_type`, `f_alpha_divergence_coef`)."""

    loss_type: str | tuple[str, ...] = "sigmoid"
    beta: float = 0.1
    loss_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5

    @property
    def types(self) -> tuple[str, ...]:
        return (self.loss_type,) if isinstance(self.loss_type, str) else tuple(self.loss_type)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(self.loss_weights) if self.loss_weights is not None else (1.0,) * len(self.types)


def f_divergence_scores(logratios: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """`f'(pi / pi_ref)` of the log-ratios for f-DPO (arXiv 2309.16240), as TRL computes it: the identity for the
    reverse KL (DPO), `1 - 1/t` for the forward KL, `log(2t / (t + 1))` for Jensen-Shannon, and `(t^(alpha-1) - 1) /
    (alpha - 1)` for the alpha-divergence (the reverse KL at `alpha = 1`)."""
    if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(alpha - 1.0) < 1e-6):
        return logratios
    if kind == "forward_kl":
        return 1 - torch.exp(-logratios)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if kind == "alpha_divergence":
        scaled = (alpha - 1.0) * logratios
        clamp_max = 11.0 if scaled.dtype == torch.float16 else 80.0  # exp(.) stays representable once cast back
        return (torch.exp(torch.clamp(scaled.float(), max=clamp_max)) - 1.0).to(scaled.dtype) / (alpha - 1.0)
    raise ValueError(f"Unknown `f_divergence_type` {kind!r}: use one of {list(F_DIVERGENCES)}.")


def _one_loss(pair: PairLogps, loss_type: str, s: BaseLoss) -> torch.Tensor:
    """One of DPO's losses per example, shape `(batch,)`, with the equation each implements."""
    beta, eps = s.beta, s.label_smoothing
    chosen_ratio, rejected_ratio = pair.chosen_logratios, pair.rejected_logratios
    chosen_score = f_divergence_scores(chosen_ratio, s.f_divergence_type, s.f_alpha_divergence_coef)
    rejected_score = f_divergence_scores(rejected_ratio, s.f_divergence_type, s.f_alpha_divergence_coef)
    delta = chosen_score - rejected_score
    if loss_type == "sigmoid":  # DPO, Eq. 7 of arXiv 2305.18290
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":  # SLiC, Eq. 10 of arXiv 2305.10425
        return torch.relu(1 - beta * delta)
    if loss_type in ("ipo", "sigmoid_norm"):  # on token-averaged scores: IPO (Eq. 17 of arXiv 2310.12036), and DPO
        chosen_avg = chosen_score / pair.chosen_tokens.clamp(min=1)
        rejected_avg = rejected_score / pair.rejected_tokens.clamp(min=1)
        if loss_type == "ipo":
            return (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2
        return -F.logsigmoid(beta * (chosen_avg - rejected_avg))
    if loss_type == "exo_pair":  # EXO, Eq. 16 of arXiv 2402.00856
        epsilon = torch.tensor(eps, device=delta.device)
        return torch.sigmoid(beta * delta) * (F.logsigmoid(beta * delta) - torch.log1p(-epsilon)) + torch.sigmoid(
            -beta * delta
        ) * (F.logsigmoid(-beta * delta) - torch.log(epsilon))
    if loss_type == "nca_pair":  # NCA, arXiv 2402.05369
        chosen, rejected = beta * chosen_ratio, beta * rejected_ratio
        return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)
    if loss_type == "robust":  # robust DPO, Eq. 21 of arXiv 2403.00409
        clean = -(1 - eps) * F.logsigmoid(beta * delta)
        flipped = -eps * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * eps)
    if loss_type == "bco_pair":  # BCO on pairs, without a running reward mean (TRL 1.16 keeps none either)
        return -F.logsigmoid(beta * chosen_ratio) - F.logsigmoid(-beta * rejected_ratio)
    if loss_type == "sppo_hard":  # SPPO with hard probabilities, Eq. 4.7 of arXiv 2405.00675
        return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    if loss_type in SORTING_LOSS_TYPES:  # AOT, arXiv 2406.05882: sorted within this pair's batch
        if loss_type == "aot":
            policy, _ = torch.sort(pair.chosen - pair.rejected, dim=0)
            reference, _ = torch.sort(pair.ref_chosen - pair.ref_rejected, dim=0)
        else:
            policy, _ = torch.sort(chosen_ratio, dim=0)
            reference, _ = torch.sort(rejected_ratio, dim=0)
        sorted_delta = policy - reference
        return -F.logsigmoid(beta * sorted_delta) * (1 - eps) - F.logsigmoid(-beta * sorted_delta) * eps
    if loss_type == "apo_zero":  # APO-zero, Eq. 7 of arXiv 2408.06266
        return 1 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)
    if loss_type == "apo_down":  # APO-down, Eq. 8 of arXiv 2408.06266
        return torch.sigmoid(beta * chosen_ratio) + 1 - torch.sigmoid(beta * (chosen_ratio - rejected_ratio))
    if loss_type == "discopop":  # DiscoPOP, Eq. 5 of arXiv 2406.08414
        logits = beta * delta
        mix = torch.sigmoid(logits / s.discopop_tau)
        return -F.logsigmoid(logits) * (1 - mix) + torch.exp(-logits) * mix
    if loss_type == "sft":  # the winners' NLL over all their tokens in the batch, the same for every example
        winner = pair.plain_sums()[0]
        return (-winner.sum() / pair.chosen_tokens.sum().clamp(min=1)).expand(winner.shape)
    raise ValueError(f"Unsupported SSO base loss {loss_type!r}: use one of {list(BASE_LOSS_TYPES)}.")


def base_pair_loss(pair: PairLogps, settings: BaseLoss) -> torch.Tensor:
    """`L_base(prompt; y_w > y_l)` per example, shape `(batch,)`, exactly as TRL's DPOTrainer computes it for its one
    pair: the sum of the losses of `settings.types` times their `weights`, each times the pair's WPO weight when it
    has one. Its batch mean is DPOTrainer's loss.

    Per pair, by design:
    - `"aot"` / `"aot_unpaired"` sort the examples of this pair's batch, so their per-example terms belong to no
      example (a per-example weight such as `W` would be misaligned; `SSOConfig` refuses that combination);
    - `"sft"` is the winners' mean NLL over every winner token of this pair's batch, repeated for each example;
    - `"bco_pair"` keeps no running mean of rewards across steps (TRL 1.16's DPOTrainer keeps none either).
    """
    total = 0.0
    for loss_type, weight in zip(settings.types, settings.weights, strict=True):
        loss = _one_loss(pair, loss_type, settings)
        if pair.wpo_weight is not None:
            loss = loss * pair.wpo_weight
        total = total + weight * loss
    return total


def sso_weight(main: PairLogps, alpha: float, detach: bool) -> torch.Tensor:
    """`W = sigmoid(-(a * A(x, y+) + (1 - a) * A(x, y-)))` per example, in `(0.5, 1)` since `A <= 0`."""
    weight = torch.sigmoid(-(alpha * main.chosen_mean_logp() + (1 - alpha) * main.rejected_mean_logp()))
    return weight.detach() if detach else weight


def main_loss(main: PairLogps, base_loss: BaseLoss, sft_coef: float = 0.0):
    """The share of the main pair in the `"policy"` loss with steering on, per example: `L_base + gamma * NLL(x, y+)`
    (the gradient through `W` aside). Returns the share, the unscaled `L_base` and the NLL of `y+`."""
    base = base_pair_loss(main, base_loss)
    nll = -main.chosen_mean_logp()
    return base + sft_coef * nll, base, nll


def steering_loss(
    pair: PairLogps,
    weight: torch.Tensor | float,
    base_loss: BaseLoss,
    *,
    objective: str = "policy",
    steer_coef: float = 0.1,
    sft_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The share of one steering pair in the SSO loss, per example: `s * (weight * L_base + gamma * NLL(winner))`.

    `s` is `steer_coef` (`c`) for `"policy"` and 1 for `"generator"`, whose `weight` is 1. Returns the share, the
    unscaled `L_base` and the NLL of the winner, each of shape `(batch,)`.
    """
    base = base_pair_loss(pair, base_loss)
    nll = -pair.chosen_mean_logp()
    scale = 1.0 if objective == "generator" else steer_coef
    return scale * (weight * base + sft_coef * nll), base, nll


@dataclass(frozen=True)
class LossSettings(BaseLoss):
    """The switches of the SSO objective, named as in the module docstring (`SSOConfig` documents each: `objective`
    is `sso_objective`, `steer_coef` is `c`, `weight_alpha` is `a`, `sft_coef` is `gamma`, ...), on top of the
    settings of `L_base` (`BaseLoss`, with DPOConfig's names)."""

    objective: str = "policy"
    steer_coef: float = 0.1
    use_weight: bool = True
    weight_alpha: float = 0.5
    detach_weight: bool = False
    sft_coef: float = 0.0


def _weight(main: PairLogps | None, settings: LossSettings, detach: bool):
    """`W` of the `"policy"` objective, or `None` where it is off or undefined (no main pair, `"generator"`)."""
    if main is None or not settings.use_weight:
        return None
    return sso_weight(main, settings.weight_alpha, detach)


def _share(name: str, pair: PairLogps, weight: torch.Tensor | None, s: LossSettings):
    """`(share, L_base, NLL of the winner)` of pair `name` in the loss, per example, given `W` (`None`: 1)."""
    if name != "main":
        weight = 1.0 if weight is None else weight
        return steering_loss(pair, weight, s, objective=s.objective, steer_coef=s.steer_coef, sft_coef=s.sft_coef)
    share, base, nll = main_loss(pair, s, s.sft_coef)
    if s.steer_coef == 0 and weight is not None:  # steering off: W scales the main pair itself
        share = weight * share
    return share, base, nll


def _check(s: LossSettings, main: PairLogps | None, pos: PairLogps | None, neg: PairLogps | None):
    if s.objective == "generator":
        if pos is None or neg is None:
            raise ValueError("The 'generator' objective needs the positive and the negative steering pairs.")
        return
    if s.objective != "policy":
        raise ValueError(f"Unknown SSO objective {s.objective!r}: use 'policy' or 'generator'.")
    if main is None:
        raise ValueError("The 'policy' objective needs the main pair.")
    if s.steer_coef != 0 and (pos is None or neg is None):
        raise ValueError("With `steer_coef > 0` the 'policy' objective needs both steering pairs.")


def pair_share(name: str, pairs: dict[str, PairLogps], **settings) -> torch.Tensor:
    """The share of pair `name` (`"main"`, `"pos"` or `"neg"`) in `sso_loss`, per example, shape `(batch,)`, with `W`
    detached: all the gradient that flows through that pair's log-probabilities, except the one through `W`.

    `pairs` holds the pairs forwarded so far (the main pair, when the objective uses it, is always among them: `W`
    depends on it). `settings` are the fields of `LossSettings`, as for `sso_loss`; `detach_weight` makes no
    difference here, since `W` is always detached.
    """
    s = LossSettings(**settings)
    main = pairs.get("main") if s.objective == "policy" else None
    return _share(name, pairs[name], _weight(main, s, detach=True), s)[0]


def sso_loss(
    main: PairLogps | None, pos: PairLogps | None, neg: PairLogps | None, **settings
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SSO objective (module docstring) for one batch: the mean over examples of the sum of the pairs' shares.

    Args:
        main: the pair `(x; y+ > y-)`; required by `"policy"`, ignored (pass `None`) for `"generator"`.
        pos: the pair `(x+; y+ > y-)`; required unless the objective is `"policy"` with `steer_coef == 0`.
        neg: the pair `(x-; y_o > y+)`; required with `pos`.
        settings: the fields of `LossSettings` (`objective`, `beta`, `loss_type`, `steer_coef`, `use_weight`,
            `weight_alpha`, `detach_weight`, `sft_coef`, and the other settings of `BaseLoss`).

    Returns:
        The scalar loss (mean over the batch) and its per-example terms, each of shape `(batch,)`: `main`, `pos`, `neg`
        (the unscaled base losses of the pairs used, by pair name), `sft` (the NLL sum before `gamma`) and `weight`
        (`W`, `"policy"` only).
    """
    s = LossSettings(**settings)
    _check(s, main, pos, neg)
    if s.objective == "generator":
        main = None
    pairs = {name: pair for name, pair in (("main", main), ("pos", pos), ("neg", neg)) if pair is not None}
    if s.objective == "policy" and s.steer_coef == 0:
        pairs = {"main": main}
    weight = _weight(main, s, detach=s.detach_weight)

    terms: dict[str, torch.Tensor] = {}
    total, nll = 0.0, {}
    for name, pair in pairs.items():
        share, base, nll[name] = _share(name, pair, weight, s)
        terms[name] = base
        total = total + share
    # SFT term before gamma: the NLL of y+ under x, plus c times (generator: once) those of the steering winners
    terms["sft"] = nll.get("main", 0.0)
    if "pos" in nll:
        scale = 1.0 if s.objective == "generator" else s.steer_coef
        terms["sft"] = terms["sft"] + scale * (nll["pos"] + nll["neg"])
    if weight is not None:
        terms["weight"] = weight
    return total.mean(), terms
