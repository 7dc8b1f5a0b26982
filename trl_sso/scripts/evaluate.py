"""`trl-sso evaluate`: how policies answer held-out prompts with **no** principle, scored by the checkers of the
verifiable features (and a reward model when given). This is how a user sees whether a round of SSO moved the policy:
compare the model before and after it on the same prompts.

For each model: the share of answers that follow the good side of each verifiable feature (and their mean), the mean
answer length and truncation rate and, with `--reward_model`, the mean reward and the pairwise win rate against the
first model. Writes `evaluation.json` and `evaluation.png`."""

from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_json_atomic
from ..generation.arguments import SamplingOptions, VLLMOptions, redefault
from ..generation.policy import policy_sampler
from ..generation.prompts import load_prompts
from ..names import DEFAULT_MODEL_ID, public_names
from ..options import Range, check_ranges
from ..principles import expand_feature_names, known_features
from ..signal.heldout import format_change, held_out_change, score_answers
from ..signal.intervals import (
    wilson,
    with_interval,
)
from ..signal.plots import plot_evaluation


@dataclass
class EvaluateArguments(SamplingOptions, VLLMOptions):
    """Options of `trl-sso evaluate`; the sampling and vLLM options are the generator's (`SamplingOptions`,
    `VLLMOptions`)."""

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
    rows, engine = [], None  # with `use_vllm`, one engine answers for every model in turn
    for name in models:
        sampler, _ = policy_sampler(args, name, args.batch_size, engine, chat=False)
        engine = getattr(sampler, "engine", None)
        row, answers[name] = score_answers(
            sampler,
            prompts,
            {n: features[n] for n in names},
            args.max_completion_length,
            args.temperature,
            args.seed,
            args.top_p,
        )
        rows.append({"model": name, **row})
        del sampler
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


def compare_with_first(rows: list[dict]) -> None:
    """Add to each row after the first its change against the first model, under `vs_first` (`held_out_change`: the
    models answered the same prompts)."""
    for row in rows[1:]:
        row["vs_first"] = held_out_change(row, rows[0])


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


def main(args) -> int:
    print(format_evaluation(evaluate_models(args)))
    print(f"Wrote {args.output_dir}/evaluation.json and evaluation.png.")
    return 0
