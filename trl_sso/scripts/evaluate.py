"""`trl-sso evaluate`: how policies answer held-out prompts with **no** principle, scored by the checkers of the
verifiable features (and a reward model when given). This is how a user sees whether a round of SSO moved the policy:
compare the model before and after it on the same prompts.

For each model: the share of answers that follow the good side of each verifiable feature (and their mean), the mean
answer length and truncation rate and, with `--reward_model`, the mean reward and the pairwise win rate against the
first model. Writes `evaluation.json` and `evaluation.png`."""

from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_json_atomic
from ..generation.arguments import SamplingOptions, redefault
from ..generation.prompts import load_prompts
from ..generation.samplers import TransformersSampler
from ..names import DEFAULT_MODEL_ID, public_names
from ..options import Range, check_ranges
from ..principles import expand_feature_names, known_features
from ..signal.intervals import (
    all_equal_note,
    bootstrap_mean,
    paired_mean_change,
    paired_score_change,
    score_mean,
    wilson,
    with_interval,
)
from ..signal.onpolicy import load_policy
from ..signal.plots import plot_evaluation


@dataclass
class EvaluateArguments(SamplingOptions):
    """Options of `trl-sso evaluate`; the sampling options are the generator's (`SamplingOptions`)."""

    # the policy as it is, not a sample of it: greedy by default (0 is allowed here, unlike when generating triples)
    temperature: float = redefault(SamplingOptions, "temperature", 0.0, range=Range(0, 2))
    max_completion_length: int = redefault(SamplingOptions, "max_completion_length", 128)

    model_name_or_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "Models to compare (paths or Hub ids), the first being the baseline; repeat the flag or list "
            "several. Default: the packaged SmolLM2-135M-Instruct.",
            "aliases": ["--model"],
            "repeatable": True,
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation prompts (file, saved dataset or dataset name). Default: the 40 packaged held-out "
            "prompts, disjoint from the generation prompts."
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column of the prompt set that holds the prompts."})
    num_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    features: list[str] = field(
        default_factory=lambda: ["verifiable"],
        metadata={"help": "Verifiable features to score the answers on (names or the set 'verifiable')."},
    )
    features_file: str | None = field(default=None, metadata={"help": "A features file with more checkers."})
    reward_model: str | None = field(default=None, metadata={"help": "A reward model that also scores the answers."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch."})
    seed: int = field(default=42, metadata={"help": "Seed of sampling (with a temperature above 0)."})
    output_dir: str = field(default="evaluation", metadata={"help": "Where evaluation.json and the plot go."})

    def __post_init__(self):
        self._check_sampling()
        check_ranges(self)  # greedy at temperature 0, sampling above


def evaluate_models(args: EvaluateArguments) -> dict:
    """Answer the prompts with each model and score the answers (see the module docstring). Returns the report."""
    features = known_features(args.features_file)
    names = expand_feature_names(args.features, features)
    unverifiable = [name for name in names if features[name].checker is None]
    if unverifiable:
        raise ValueError(f"`--features` {unverifiable} have no checker: evaluate scores verifiable features only.")
    prompts = load_prompts(args.prompts, args.prompt_column, num_prompts=args.num_prompts, packaged="eval_prompts")
    if args.reward_model:  # first: a model that is no reward model is refused before any policy answers
        from ..signal.rewards import load_reward_model, rewards

        reward_model, reward_tokenizer = load_reward_model(args.reward_model)
    models, answers = args.model_name_or_path or [DEFAULT_MODEL_ID], {}
    rows = []
    for name in models:
        model, tokenizer = load_policy(name)
        row, answers[name] = score_answers(
            model,
            tokenizer,
            prompts,
            {n: features[n] for n in names},
            args.max_completion_length,
            args.temperature,
            args.batch_size,
            args.seed,
            args.top_p,
            args.sampling_kwargs(),
        )
        rows.append({"model": name, **row})
        del model
    compare_with_first(rows)
    if args.reward_model:
        scores = {name: rewards(reward_model, reward_tokenizer, list(zip(prompts, answers[name]))) for name in models}
        for row in rows:
            own, base = scores[row["model"]], scores[models[0]]
            wins = sum(a > b for a, b in zip(own, base))
            row["mean_reward"] = sum(own) / len(own)
            row["win_rate_vs_first"], row["win_rate_vs_first_ci95"] = wins / len(own), wilson(wins, len(own))
    for row, shown in zip(rows, public_names(models), strict=True):  # the report names no local path
        row["model"] = shown
    report = {"prompts": len(prompts), "features": names, "models": rows}
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "evaluation.json", report, indent=2)
    plot_evaluation(report, output / "evaluation.png")
    return report


def score_answers(
    model,
    tokenizer,
    prompts,
    features,
    max_new_tokens=128,
    temperature=0.0,
    batch_size=8,
    seed=42,
    top_p=1.0,
    sampling_kwargs=None,
):
    """Let `model` answer `prompts` (no principle) and score the answers with the checkers of `features` (name ->
    `Feature`). Returns the scores and the answers: per feature, the share of answers following its good side and the
    per-prompt 0/1 scores; their mean per prompt, its mean; the mean tokens and the truncated share. Every share and
    mean carries its 95% interval (`trl_sso.signal.intervals`: Wilson on the summed scores; tokens: bootstrap)."""
    sampler = TransformersSampler(model, tokenizer, batch_size, sampling_kwargs)
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


def compare_with_first(rows: list[dict]) -> None:
    """Add to each row after the first its change against the first model, under `vs_first` (`held_out_change`: the
    models answered the same prompts)."""
    for row in rows[1:]:
        row["vs_first"] = held_out_change(row, rows[0])


def format_change(change: dict) -> str:
    """A held-out change for tables: `+0.25 [0.06, 0.46] significant (exact McNemar p 0.016)`."""
    verdict = "significant" if change["change_significant"] else "within noise"
    figure = with_interval(change["change"], change["change_ci95"]).replace("-0.00", "0.00")
    sign = "+" if change["change"] > 0 else ""
    p = change["change_p_value"]
    return f"{sign}{figure} {verdict} ({change['change_test']} p {'< 0.001' if p < 0.001 else f'{p:.3f}'})"


def format_evaluation(report: dict) -> str:
    """The evaluation as a one-screen table: one row per model, the mean with its 95% interval and, after the first
    model, the change against it and whether it is larger than its uncertainty."""
    names = report["features"]
    header = f"{'model':32} " + " ".join(f"{n[:9]:>9}" for n in names) + f" {'mean [95% interval]':>19}"
    header += f" {'tokens':>6} {'cut':>4} {'change vs first [95% interval]':>30}"
    has_reward = "mean_reward" in report["models"][0]
    header += f" {'reward':>7} {'win':>5}" if has_reward else ""
    lines = [f"Held-out evaluation on {report['prompts']} prompts (share of answers following the good side)", header]
    for row in report["models"]:
        line = f"{row['model'][-32:]:32} " + " ".join(f"{row['follows_good'][n]:9.2f}" for n in names)
        line += f" {with_interval(row['follows_good_mean'], row.get('follows_good_mean_ci95')):>19}"
        line += f" {row['mean_tokens']:6.1f} {row['truncated']:4.2f}"
        change = "(baseline)"
        if "vs_first" in row:
            change = format_change(row["vs_first"])
        line += f" {change:>30}"
        if has_reward:
            line += f" {row['mean_reward']:7.3f} {row['win_rate_vs_first']:5.2f}"
        lines.append(line)
    lines.append("Per-feature intervals: evaluation.json (`follows_good_ci95`) and evaluation.png.")
    return "\n".join(lines)
