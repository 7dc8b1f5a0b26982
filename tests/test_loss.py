"""The pure SSO loss against hand-computed values (plain Python math) for every combination of its switches, and the
gradient path through the weight W."""

import itertools
import math

import pytest
import torch

from trl_sso.loss import PairLogps, base_pair_loss, sso_loss, sso_weight


BETA = 0.2
# Two examples per pair: policy and reference summed log-probs, completion token counts
RAW = {
    "main": dict(
        chosen=[-12.0, -8.0],
        rejected=[-15.0, -7.0],
        ref_chosen=[-13.0, -8.5],
        ref_rejected=[-14.0, -7.5],
        chosen_tokens=[4, 2],
        rejected_tokens=[5, 3],
    ),
    "pos": dict(
        chosen=[-10.0, -6.0],
        rejected=[-16.0, -9.0],
        ref_chosen=[-10.5, -6.5],
        ref_rejected=[-15.0, -8.0],
        chosen_tokens=[4, 2],
        rejected_tokens=[5, 3],
    ),
    "neg": dict(
        chosen=[-9.0, -11.0],
        rejected=[-14.0, -7.5],
        ref_chosen=[-9.5, -10.0],
        ref_rejected=[-13.0, -8.0],
        chosen_tokens=[3, 6],
        rejected_tokens=[4, 2],
    ),
}


def make_pair(name, requires_grad=False):
    values = {k: torch.tensor(v, dtype=torch.float64) for k, v in RAW[name].items()}
    for key in ("chosen", "rejected"):
        values[key].requires_grad_(requires_grad)
    return PairLogps(**values)


def sig(z):
    return 1 / (1 + math.exp(-z))


def hand_base(name, i, loss_type):
    r = {k: v[i] for k, v in RAW[name].items()}
    chosen_ratio, rejected_ratio = r["chosen"] - r["ref_chosen"], r["rejected"] - r["ref_rejected"]
    if loss_type == "sigmoid":
        return -math.log(sig(BETA * (chosen_ratio - rejected_ratio)))
    return (chosen_ratio / r["chosen_tokens"] - rejected_ratio / r["rejected_tokens"] - 1 / (2 * BETA)) ** 2


def hand_mean(name, key, i):
    return RAW[name][key][i] / RAW[name][f"{key}_tokens"][i]


def hand_loss(objective, loss_type, steer, use_weight, alpha, sft):
    total = 0.0
    for i in range(2):
        if objective == "generator":
            loss = hand_base("pos", i, loss_type) + hand_base("neg", i, loss_type)
            loss += sft * (-hand_mean("pos", "chosen", i) - hand_mean("neg", "chosen", i))
        else:
            weight = sig(-(alpha * hand_mean("main", "chosen", i) + (1 - alpha) * hand_mean("main", "rejected", i)))
            weight = weight if use_weight else 1.0
            main = hand_base("main", i, loss_type)
            if steer == 0:
                loss = weight * (main + sft * -hand_mean("main", "chosen", i))
            else:
                g = steer * (hand_base("pos", i, loss_type) + hand_base("neg", i, loss_type))
                nll = -hand_mean("main", "chosen", i) + steer * (
                    -hand_mean("pos", "chosen", i) - hand_mean("neg", "chosen", i)
                )
                loss = main + weight * g + sft * nll
        total += loss
    return total / 2


# Each switch combination whose loss differs once: the policy objective over its switches (detaching W changes the
# gradient, not the value, and is tested on the gradient below), the generator objective over the two that apply
# to it (it has no W, and its steering pairs are always on).
GRID = [
    ("policy", loss_type, steer, use_weight, False, sft)
    for loss_type, steer, use_weight, sft in itertools.product(
        ["sigmoid", "ipo"], [0.0, 0.3], [True, False], [0.0, 0.25]
    )
] + [
    ("generator", loss_type, 0.3, False, False, sft)
    for loss_type, sft in itertools.product(["sigmoid", "ipo"], [0.0, 0.25])
]


@pytest.mark.parametrize("objective,loss_type,steer,use_weight,detach,sft", GRID)
def test_loss_matches_hand_computation(objective, loss_type, steer, use_weight, detach, sft):
    alpha = 0.66
    main = None if objective == "generator" else make_pair("main")
    with_steering = objective == "generator" or steer > 0
    pos, neg = (make_pair("pos"), make_pair("neg")) if with_steering else (None, None)
    loss, terms = sso_loss(
        main,
        pos,
        neg,
        objective=objective,
        beta=BETA,
        loss_type=loss_type,
        steer_coef=steer,
        use_weight=use_weight,
        weight_alpha=alpha,
        detach_weight=detach,
        sft_coef=sft,
    )
    assert loss.item() == pytest.approx(hand_loss(objective, loss_type, steer, use_weight, alpha, sft), rel=1e-12)
    expected_terms = {"sft"}
    if objective == "policy":
        expected_terms |= {"main"} | ({"weight"} if use_weight else set())
    if with_steering:
        expected_terms |= {"pos", "neg"}
    assert set(terms) == expected_terms
    for i in range(2):
        if "main" in terms:
            assert terms["main"][i].item() == pytest.approx(hand_base("main", i, loss_type), rel=1e-12)
        if "neg" in terms:
            assert terms["neg"][i].item() == pytest.approx(hand_base("neg", i, loss_type), rel=1e-12)


def test_weight_range_and_value():
    main = make_pair("main")
    weight = sso_weight(main, alpha=0.5, detach=False)
    expected = [sig(-(0.5 * -3.0 + 0.5 * -3.0)), sig(-(0.5 * -4.0 + 0.5 * (-7.0 / 3)))]
    assert weight.tolist() == pytest.approx(expected, rel=1e-12)
    assert ((weight > 0.5) & (weight < 1)).all()


def _grad_of_chosen(detach):
    main, pos, neg = make_pair("main", True), make_pair("pos", True), make_pair("neg", True)
    loss, _ = sso_loss(main, pos, neg, beta=BETA, steer_coef=0.3, weight_alpha=0.5, detach_weight=detach)
    loss.backward()
    return main.chosen.grad.clone()


def test_gradient_flows_through_weight_unless_detached():
    # d loss / d main.chosen by hand: main term, plus (not detached) dW/d chosen * G
    grads = {}
    for detach in (False, True):
        grads[detach] = _grad_of_chosen(detach)
    for i in range(2):
        r = {k: v[i] for k, v in RAW["main"].items()}
        margin = BETA * ((r["chosen"] - r["ref_chosen"]) - (r["rejected"] - r["ref_rejected"]))
        d_main = -BETA * (1 - sig(margin)) / 2  # batch mean over 2 examples
        g = 0.3 * (hand_base("pos", i, "sigmoid") + hand_base("neg", i, "sigmoid"))
        w = sig(-(0.5 * hand_mean("main", "chosen", i) + 0.5 * hand_mean("main", "rejected", i)))
        d_weight = w * (1 - w) * (-0.5 / r["chosen_tokens"])
        assert grads[True][i].item() == pytest.approx(d_main, rel=1e-10)
        assert grads[False][i].item() == pytest.approx(d_main + d_weight * g / 2, rel=1e-10)


def test_steer_pairs_get_no_gradient_when_steering_off():
    main, pos, neg = (make_pair(name, requires_grad=True) for name in ("main", "pos", "neg"))
    loss, terms = sso_loss(main, pos, neg, steer_coef=0.0)
    loss.backward()
    assert main.chosen.grad is not None and main.rejected.grad is not None
    assert all(pair.chosen.grad is None and pair.rejected.grad is None for pair in (pos, neg))
    assert not {"pos", "neg"} & set(terms)


def test_base_loss_rejects_unknown_type_and_missing_pairs():
    with pytest.raises(ValueError, match="sigmoid"):
        base_pair_loss(make_pair("main"), BETA, "hinge")
    with pytest.raises(ValueError, match="steering pairs"):
        sso_loss(make_pair("main"), None, None, steer_coef=0.1)
    with pytest.raises(ValueError, match="generator"):
        sso_loss(None, make_pair("pos"), None, objective="generator")


@pytest.mark.parametrize(
    "objective,loss_type,steer,use_weight,sft",
    [(o, lt, s, w, g) for o, lt, s, w, g, _ in GRID],
)
def test_pair_shares_sum_to_the_loss_with_w_detached(objective, loss_type, steer, use_weight, sft):
    """Each pair's `pair_share` is its term of `sso_loss`: with W detached they add up to the loss, per example."""
    from trl_sso.data import pairs_in_use
    from trl_sso.loss import pair_share

    names = pairs_in_use(objective, steer)
    pairs = {name: make_pair(name) for name in names}
    settings = dict(
        objective=objective,
        beta=BETA,
        loss_type=loss_type,
        steer_coef=steer,
        use_weight=use_weight,
        weight_alpha=0.66,
        sft_coef=sft,
    )
    loss, _ = sso_loss(pairs.get("main"), pairs.get("pos"), pairs.get("neg"), detach_weight=True, **settings)
    shares = sum(pair_share(name, pairs, detach_weight=False, **settings) for name in names)
    assert shares.mean().item() == pytest.approx(loss.item(), rel=1e-12)
    assert shares.shape == (2,)
