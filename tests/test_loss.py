"""The pure SSO loss against hand-computed values (plain Python math) for every combination of its switches, and the
gradient path through the weight W."""

import itertools
import math

import pytest
import torch

from trl_sso.loss import BASE_LOSS_TYPES, BaseLoss, PairLogps, base_pair_loss, sso_loss, sso_weight


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
        base_pair_loss(make_pair("main"), BaseLoss("hinge2", BETA))
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


# ---------------------------------------------------------------------------------------------------------------------
# Every base loss of DPOTrainer, by hand


def logsig(z):
    return -math.log1p(math.exp(-z))


def hand_scores(r, kind="reverse_kl", alpha=0.5):
    """The f-divergence scores of the winner's and the loser's log-ratios, by hand."""
    ratios = (r["chosen"] - r["ref_chosen"], r["rejected"] - r["ref_rejected"])
    if kind == "forward_kl":
        return tuple(1 - math.exp(-x) for x in ratios)
    if kind == "js_divergence":
        return tuple(math.log(2) + logsig(x) for x in ratios)
    if kind == "alpha_divergence":
        return tuple((math.exp((alpha - 1) * x) - 1) / (alpha - 1) for x in ratios)
    return ratios


def hand_one(name, i, loss_type, eps=0.1, tau=0.05, kind="reverse_kl"):
    """One base loss of example `i` of pair `name`, from the papers' equations as TRL writes them."""
    r = {k: v[i] for k, v in RAW[name].items()}
    b = BETA
    cw, cl = r["chosen"] - r["ref_chosen"], r["rejected"] - r["ref_rejected"]
    sw, sl = hand_scores(r, kind)
    d = sw - sl
    if loss_type == "sigmoid":
        return -logsig(b * d)
    if loss_type == "hinge":
        return max(0.0, 1 - b * d)
    if loss_type == "ipo":
        return (sw / r["chosen_tokens"] - sl / r["rejected_tokens"] - 1 / (2 * b)) ** 2
    if loss_type == "sigmoid_norm":
        return -logsig(b * (sw / r["chosen_tokens"] - sl / r["rejected_tokens"]))
    if loss_type == "exo_pair":
        return sig(b * d) * (logsig(b * d) - math.log(1 - eps)) + sig(-b * d) * (logsig(-b * d) - math.log(eps))
    if loss_type == "nca_pair":
        return -logsig(b * cw) - 0.5 * logsig(-b * cw) - 0.5 * logsig(-b * cl)
    if loss_type == "robust":
        return (-(1 - eps) * logsig(b * d) + eps * logsig(-b * d)) / (1 - 2 * eps)
    if loss_type == "bco_pair":
        return -logsig(b * cw) - logsig(-b * cl)
    if loss_type == "sppo_hard":
        return (cw - 0.5 / b) ** 2 + (cl + 0.5 / b) ** 2
    if loss_type in ("aot", "aot_unpaired"):  # the i-th smallest against the i-th smallest
        rows = [{k: v[j] for k, v in RAW[name].items()} for j in range(2)]
        if loss_type == "aot":
            policy = sorted(x["chosen"] - x["rejected"] for x in rows)[i]
            reference = sorted(x["ref_chosen"] - x["ref_rejected"] for x in rows)[i]
        else:
            policy = sorted(x["chosen"] - x["ref_chosen"] for x in rows)[i]
            reference = sorted(x["rejected"] - x["ref_rejected"] for x in rows)[i]
        delta = policy - reference
        return -logsig(b * delta) * (1 - eps) - logsig(-b * delta) * eps
    if loss_type == "apo_zero":
        return 1 - sig(b * cw) + sig(b * cl)
    if loss_type == "apo_down":
        return sig(b * cw) + 1 - sig(b * (cw - cl))
    if loss_type == "discopop":
        mix = sig(b * d / tau)
        return -logsig(b * d) * (1 - mix) + math.exp(-b * d) * mix
    if loss_type == "sft":  # the winners' NLL over all winner tokens of the batch
        return -sum(RAW[name]["chosen"]) / sum(RAW[name]["chosen_tokens"])
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", BASE_LOSS_TYPES)
@pytest.mark.parametrize("name", ["main", "neg"])
def test_every_base_loss_matches_hand_computation(loss_type, name):
    settings = BaseLoss(loss_type, BETA, label_smoothing=0.1, discopop_tau=0.05)
    got = base_pair_loss(make_pair(name), settings)
    # exo_pair takes log(1 - eps) of a float32 tensor, as TRL does
    rel = 1e-6 if loss_type == "exo_pair" else 1e-10
    assert got.tolist() == pytest.approx([hand_one(name, i, loss_type) for i in range(2)], rel=rel)


@pytest.mark.parametrize("kind", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust", "discopop", "sigmoid_norm"])
def test_f_divergences_reshape_the_log_ratios(kind, loss_type):
    settings = BaseLoss(loss_type, BETA, label_smoothing=0.1, f_divergence_type=kind, f_alpha_divergence_coef=0.5)
    got = base_pair_loss(make_pair("main"), settings)
    rel = 1e-6 if kind == "alpha_divergence" else 1e-10  # TRL exponentiates in float32, and so does trl-sso
    assert got.tolist() == pytest.approx([hand_one("main", i, loss_type, kind=kind) for i in range(2)], rel=rel)


def test_weighted_losses_wpo_and_ld_sums():
    """MPO: the weighted sum of the listed losses; WPO: each loss times the example's weight; LD-DPO: the base loss
    compares the weighted sums while `A` and the NLL (`sft`) read the plain ones."""
    pair = make_pair("main")
    mpo = base_pair_loss(pair, BaseLoss(("sigmoid", "bco_pair", "sft"), BETA, loss_weights=(0.8, 0.2, 1.0)))
    hand = [0.8 * hand_one("main", 0, "sigmoid") + 0.2 * hand_one("main", 0, "bco_pair") + hand_one("main", 0, "sft")]
    assert mpo[0].item() == pytest.approx(hand[0], rel=1e-10)

    weighted = PairLogps(**{**vars(pair), "wpo_weight": torch.tensor([0.5, 0.25], dtype=torch.float64)})
    wpo = base_pair_loss(weighted, BaseLoss(("sigmoid", "ipo"), BETA))
    for i, w in enumerate([0.5, 0.25]):
        assert wpo[i].item() == pytest.approx(w * (hand_one("main", i, "sigmoid") + hand_one("main", i, "ipo")))

    plain = (pair.chosen - 1.0, pair.rejected - 2.0)
    ld = PairLogps(**{**vars(pair), "plain": plain})
    sigmoid = BaseLoss("sigmoid", BETA)
    assert base_pair_loss(ld, sigmoid).tolist() == base_pair_loss(pair, sigmoid).tolist()
    assert ld.chosen_mean_logp().tolist() == pytest.approx([(-12.0 - 1) / 4, (-8.0 - 1) / 2])
    sft = base_pair_loss(ld, BaseLoss("sft"))
    assert sft[0].item() == pytest.approx(-(-12.0 - 1 - 8.0 - 1) / 6)


def test_the_loss_types_are_trls():
    """`BASE_LOSS_TYPES` is the list of losses TRL's DPOTrainer computes, read from its source: a loss that a new TRL
    adds fails here until `base_pair_loss` has it."""
    import inspect
    import re

    from trl import DPOTrainer

    source = inspect.getsource(DPOTrainer._compute_loss)
    assert re.findall(r'loss_type == "(\w+)"', source) == list(BASE_LOSS_TYPES)
