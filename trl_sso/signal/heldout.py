"""How a policy answers held-out prompts with no principle, scored by the checkers of the verifiable features, and
how two such evaluations of the same prompts compare: what `trl-sso evaluate` reports, and what `iterate` measures
after each round (`signal.json`, `rounds.json`)."""

from ..principles import VERIFIABLE, expand_feature_names, known_features
from .intervals import (
    all_equal_note,
    bootstrap_mean,
    paired_mean_change,
    paired_score_change,
    score_mean,
    with_interval,
)


def evaluation_features(options) -> dict:
    """The verifiable features a policy is evaluated on: those the data were generated with (`options.features`, from
    `options.features_file`), else all of them."""
    features = known_features(options.features_file)
    names = expand_feature_names(options.features, features) if options.features else []
    names = [name for name in names if features[name].checker is not None] or list(VERIFIABLE)
    return {name: features[name] for name in names}


def score_answers(sampler, prompts, features, max_new_tokens=128, temperature=0.0, seed=42, top_p=1.0):
    """Let the policy of `sampler` answer `prompts` (no principle) and score the answers with the checkers of
    `features` (name -> `Feature`). Returns the scores and the answers: per feature, the share of answers following
    its good side and the per-prompt 0/1 scores; their mean per prompt, its mean; the mean tokens and the truncated
    share. Every share and mean carries its 95% interval (`trl_sso.signal.intervals`: Wilson on the summed scores;
    tokens: bootstrap)."""
    completions = sampler.sample(prompts, temperature, top_p, max_new_tokens, seed)
    n = len(completions)
    scores = {name: [f.checker(c.text) for c in completions] for name, f in features.items()}
    per_prompt = [sum(s[i] for s in scores.values()) / len(scores) for i in range(n)]
    tokens = [c.num_tokens for c in completions]
    row = {
        "follows_good": {name: score_mean(s)[0] for name, s in scores.items()},
        "follows_good_ci95": {name: score_mean(s)[1] for name, s in scores.items()},
        "follows_good_per_feature": scores,
        "follows_good_per_prompt": per_prompt,
        "mean_tokens": sum(tokens) / n,
        "mean_tokens_ci95": bootstrap_mean(tokens),
        "tokens_per_prompt": tokens,
    }
    row["follows_good_mean"], row["follows_good_mean_ci95"] = score_mean(per_prompt)
    row["truncated"], row["truncated_ci95"] = score_mean([float(not c.finished) for c in completions])
    if all_equal_note(tokens):
        row["mean_tokens_note"] = all_equal_note(tokens)
    return row, [c.text for c in completions]


def held_out_change(after: dict, before: dict) -> dict:
    """How the held-out follow rate changed between two evaluations of the same prompts (`paired_score_change`,
    prefixed keys without it: `change`, `change_ci95`, `change_p_value`, ...), with the change of mean tokens beside it
    (`tokens_change`, paired bootstrap)."""
    change = paired_score_change(after["follows_good_per_prompt"], before["follows_good_per_prompt"])
    result = {
        "change": change["change"],
        "change_ci95": change["ci95"],
        "change_p_value": change["p_value"],
        "change_test": change["test"],
        "change_significant": change["significant"],
        "change_gained": change["gained"],
        "change_lost": change["lost"],
        "pairs": change["pairs"],
    }
    if "tokens_per_prompt" in after and "tokens_per_prompt" in before:
        tokens = paired_mean_change(after["tokens_per_prompt"], before["tokens_per_prompt"])
        result["tokens_change"], result["tokens_change_ci95"] = tokens["change"], tokens["ci95"]
        if "note" in tokens:
            result["tokens_change_note"] = tokens["note"]
    return result


def format_change(change: dict) -> str:
    """A held-out change for tables: `+0.25 [0.06, 0.46] significant (exact McNemar p 0.016)`."""
    verdict = "significant" if change["change_significant"] else "within noise"
    figure = with_interval(change["change"], change["change_ci95"]).replace("-0.00", "0.00")
    sign = "+" if change["change"] > 0 else ""
    p = change["change_p_value"]
    return f"{sign}{figure} {verdict} ({change['change_test']} p {'< 0.001' if p < 0.001 else f'{p:.3f}'})"
