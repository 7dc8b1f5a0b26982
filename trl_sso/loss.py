"""The SSO objectives as pure tensor functions (no model, no trainer), following arXiv 2410.17131.

Notation (see `SSOConfig`): `x` the query, `x+` / `x-` the query under the positive / negative principle,
`y+` (chosen), `y-` (rejected), `y_o` (original). For each pair, `L_base(prompt; y_w > y_l)` is the DPO sigmoid or the
IPO loss against a frozen reference, `A(prompt, y)` the token-mean log-probability of `y` under the policy and
`NLL = -A`.

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLogps:
    """Summed completion log-probabilities of one preference pair, each of shape `(batch,)`.

    `chosen` is the winner and `rejected` the loser of the pair (for the negative steering pair: `y_o` and `y+`).
    `chosen_tokens` / `rejected_tokens` count the completion tokens, for token means (IPO, `A`, NLL).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

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
        )

    def chosen_mean_logp(self) -> torch.Tensor:
        """`A(prompt, winner)`: token-mean log-probability of the winner under the policy."""
        return self.chosen / self.chosen_tokens.clamp(min=1)

    def rejected_mean_logp(self) -> torch.Tensor:
        """`A(prompt, loser)`: token-mean log-probability of the loser under the policy."""
        return self.rejected / self.rejected_tokens.clamp(min=1)


def base_pair_loss(pair: PairLogps, beta: float, loss_type: str) -> torch.Tensor:
    """`L_base(prompt; y_w > y_l)` per example, shape `(batch,)`, exactly as TRL's DPOTrainer computes it.

    - `"sigmoid"` (DPO, Eq. 7 of arXiv 2305.18290): `-log sigmoid(beta * (log-ratio_w - log-ratio_l))`, summed
      log-probabilities.
    - `"ipo"` (Eq. 17 of arXiv 2310.12036): `(log-ratio_w / |y_w| - log-ratio_l / |y_l| - 1 / (2 * beta))^2`,
      token-averaged log-ratios.
    """
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * (pair.chosen_logratios - pair.rejected_logratios))
    if loss_type == "ipo":
        chosen = pair.chosen_logratios / pair.chosen_tokens.clamp(min=1)
        rejected = pair.rejected_logratios / pair.rejected_tokens.clamp(min=1)
        return (chosen - rejected - 1 / (2 * beta)) ** 2
    raise ValueError(f"Unsupported SSO base loss {loss_type!r}: use 'sigmoid' or 'ipo'.")


def sso_weight(main: PairLogps, alpha: float, detach: bool) -> torch.Tensor:
    """`W = sigmoid(-(a * A(x, y+) + (1 - a) * A(x, y-)))` per example, in `(0.5, 1)` since `A <= 0`."""
    weight = torch.sigmoid(-(alpha * main.chosen_mean_logp() + (1 - alpha) * main.rejected_mean_logp()))
    return weight.detach() if detach else weight


def main_loss(main: PairLogps, *, beta: float = 0.1, loss_type: str = "sigmoid", sft_coef: float = 0.0):
    """The share of the main pair in the `"policy"` loss with steering on, per example: `L_base + gamma * NLL(x, y+)`
    (the gradient through `W` aside). Returns the share, the unscaled `L_base` and the NLL of `y+`."""
    base = base_pair_loss(main, beta, loss_type)
    nll = -main.chosen_mean_logp()
    return base + sft_coef * nll, base, nll


def steering_loss(
    pair: PairLogps,
    weight: torch.Tensor | float,
    *,
    objective: str = "policy",
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    steer_coef: float = 0.1,
    sft_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The share of one steering pair in the SSO loss, per example: `s * (weight * L_base + gamma * NLL(winner))`.

    `s` is `steer_coef` (`c`) for `"policy"` and 1 for `"generator"`, whose `weight` is 1. Returns the share, the
    unscaled `L_base` and the NLL of the winner, each of shape `(batch,)`.
    """
    base = base_pair_loss(pair, beta, loss_type)
    nll = -pair.chosen_mean_logp()
    scale = 1.0 if objective == "generator" else steer_coef
    return scale * (weight * base + sft_coef * nll), base, nll


@dataclass(frozen=True)
class LossSettings:
    """The switches of the SSO objective, named as in the module docstring (`SSOConfig` documents each: `objective`
    is `sso_objective`, `steer_coef` is `c`, `weight_alpha` is `a`, `sft_coef` is `gamma`, ...)."""

    objective: str = "policy"
    beta: float = 0.1
    loss_type: str = "sigmoid"
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
    common = dict(beta=s.beta, loss_type=s.loss_type, sft_coef=s.sft_coef)
    if name != "main":
        weight = 1.0 if weight is None else weight
        return steering_loss(pair, weight, objective=s.objective, steer_coef=s.steer_coef, **common)
    share, base, nll = main_loss(pair, **common)
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
            `weight_alpha`, `detach_weight`, `sft_coef`).

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
