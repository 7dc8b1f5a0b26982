"""`trl-sso calibrate`: which principles does a model follow, and where in the prompt? Run it before a long job.

For each verifiable feature and each principle placement (`trl_sso.data.PLACEMENTS`), the model answers the same
prompts under the feature's good principle (x+) and its bad principle (x-), built exactly as the generator builds
them; it also answers each prompt once with no principle. The feature's checker then says, per placement:
- how often the answer under x+ follows the good side, how often the answer under x- breaks it, and the base rate of
  the plain answers (Wilson intervals);
- the pair accuracy SSO depends on: y+ follows the good side better than y- (correct), as well (tie) or worse;
- the *lift*, correct minus wrong per prompt, with its bootstrap interval: a feature carries a signal in a placement
  when that interval lies above 0.
The placement whose features carry the most signal (then the highest mean accuracy) is recommended. Everything is
sampled in one batched pass. Writes `calibration.json` and `calibration.png`, and returns the report.
"""

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data import PLACEMENTS, build_steered_prompt
from ..files import write_json_atomic
from ..generation.arguments import SamplingOptions, VLLMOptions, redefault
from ..generation.policy import policy_sampler
from ..generation.prompts import load_prompts
from ..names import DEFAULT_MODEL_ID, public_name
from ..options import check_ranges
from ..principles import contrastive_system_prompts, expand_feature_names, known_features
from ..signal.intervals import paired_score_change, wilson, with_interval
from ..signal.plots import plot_calibration
from ..signal.responses import outcome, outcome_shares


@dataclass
class CalibrateArguments(SamplingOptions, VLLMOptions):
    """Options of `trl-sso calibrate`: the sampling and vLLM options are the generator's (`SamplingOptions`,
    `VLLMOptions`), so that the check samples as generation will."""

    # the check answers many times (features x placements x sides): short answers keep it a quick look
    max_completion_length: int = redefault(SamplingOptions, "max_completion_length", 64)

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The model to check (path or Hub id). Default: the packaged SmolLM2-135M-Instruct.",
            "aliases": ["--model"],
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "Prompts to answer (file, saved dataset or dataset name). Default: the packaged held-out set."
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column of the prompt set that holds the prompts."})
    num_prompts: int = field(
        default=8,
        metadata={"help": "Prompts per feature and placement: more narrow the intervals, at a proportional cost."},
    )
    features: list[str] = field(
        default_factory=lambda: ["verifiable"],
        metadata={"help": "Verifiable features to check (names or the set 'verifiable')."},
    )
    features_file: str | None = field(default=None, metadata={"help": "A features file with more checkers."})
    placements: list[str] = field(
        default_factory=lambda: list(PLACEMENTS),
        metadata={"help": f"Placements to compare, among {list(PLACEMENTS)}."},
    )
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    seed: int = field(default=42, metadata={"help": "Seed of sampling."})
    output_dir: str = field(default="calibration", metadata={"help": "Where calibration.json and the plot go."})

    def __post_init__(self):
        self._check_sampling()
        check_ranges(self)
        unknown = [placement for placement in self.placements if placement not in PLACEMENTS]
        if unknown or not self.placements:
            raise ValueError(f"`--placements` must name some of {list(PLACEMENTS)}, got {self.placements}.")


def score_cell(good: list[float], bad: list[float], plain: list[float]) -> dict:
    """The figures of one feature in one placement from the checker's scores of the answers under the good principle,
    the bad principle and none (one score per prompt, in prompt order)."""
    n = len(good)
    verdicts = Counter(outcome(g, b) for g, b in zip(good, bad, strict=True))
    lift = paired_score_change(good, bad)  # per prompt: +1 correct, 0 tie, -1 wrong; the same prompts
    cell = {
        "prompts": n,
        "follows_good": sum(good) / n,
        "follows_good_ci95": wilson(sum(good), n),
        "breaks_good": 1 - sum(bad) / n,
        "breaks_good_ci95": wilson(n - sum(bad), n),
        "base_rate": sum(plain) / n,
        "base_rate_ci95": wilson(sum(plain), n),
        **outcome_shares(verdicts),
        "lift": lift["change"],
        "lift_ci95": lift["ci95"],
        "lift_p_value": lift["p_value"],
    }
    cell["signal"] = lift["significant"] and lift["change"] > 0
    return cell


def recommend(cells: dict[str, dict[str, dict]]) -> dict:
    """The placement whose features carry a signal most often (ties: the highest mean accuracy), and those features;
    no placement (`None`) when no feature carries a signal anywhere."""
    ranking = []
    for placement, row in cells.items():
        carrying = [name for name, cell in row.items() if cell["signal"]]
        mean_correct = sum(cell["correct"] for cell in row.values()) / len(row)
        ranking.append((len(carrying), mean_correct, placement, carrying))
    count, mean_correct, placement, carrying = max(ranking)
    if not count:  # nothing to recommend: say so rather than pick a placement at random
        return {"placement": None, "features": [], "mean_correct": mean_correct}
    return {"placement": placement, "features": carrying, "mean_correct": mean_correct}


def calibrate(args: CalibrateArguments) -> dict:
    """Answer, score and write the report (see the module docstring)."""
    features = known_features(args.features_file)
    names = expand_feature_names(args.features, features)
    unverifiable = [name for name in names if features[name].checker is None]
    if unverifiable:
        raise ValueError(
            f"`--features` {unverifiable} have no checker: calibrate scores verifiable features. Judge qualitative "
            "features on generated data with `trl-sso inspect --judge`."
        )
    prompts = load_prompts(args.prompts, args.prompt_column, num_prompts=args.num_prompts, packaged="eval_prompts")
    model_name = args.model_name_or_path or DEFAULT_MODEL_ID
    sampler, tokenizer = policy_sampler(args, model_name, args.batch_size, chat=False)
    jobs = [("plain", None, None)]  # (side, feature, placement), each answering every prompt
    jobs += [(side, name, where) for name in names for where in args.placements for side in ("good", "bad")]
    inputs = []
    for side, name, where in jobs:
        if side == "plain":
            inputs += prompts
            continue
        positive, negative = contrastive_system_prompts([features[name]])
        principle = positive if side == "good" else negative
        inputs += [build_steered_prompt(p, principle, tokenizer, where) for p in prompts]
    start = time.perf_counter()
    completions = sampler.sample(
        inputs, args.temperature, args.top_p, args.max_completion_length, args.seed, desc="Answering"
    )
    seconds = time.perf_counter() - start
    n = len(prompts)
    answers = {job: [c.text for c in completions[i * n : (i + 1) * n]] for i, job in enumerate(jobs)}
    plain = answers[("plain", None, None)]
    cells = {
        where: {
            name: score_cell(
                [features[name].checker(text) for text in answers[("good", name, where)]],
                [features[name].checker(text) for text in answers[("bad", name, where)]],
                [features[name].checker(text) for text in plain],
            )
            for name in names
        }
        for where in args.placements
    }
    report = {
        "model": public_name(model_name),
        "prompts": n,
        "features": names,
        "placements": list(args.placements),
        "sampling": {
            "temperature": args.temperature,
            "top_p": args.top_p,
            "max_completion_length": args.max_completion_length,
        },
        "cells": cells,
        "recommendation": recommend(cells),
        "answers": len(completions),
        "seconds": seconds,
        "truncated": sum(not c.finished for c in completions) / len(completions),
    }
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "calibration.json", report, indent=2)
    plot_calibration(report, output / "calibration.png")
    return report


def format_calibration(report: dict) -> str:
    """The report as a table: per feature and placement, the follow rates, the pair accuracy and the lift."""
    lines = [
        f"Principle check of {report['model']}: {report['prompts']} prompts per cell, {report['answers']} answers in "
        f"{report['seconds'] / 60:.1f} minutes (95% intervals in brackets)",
        f"{'placement':16} {'feature':10} {'x+ follows':>10} {'x- breaks':>9} {'no principle':>12} "
        f"{'y+ beats y- [95% interval]':>27} {'ties':>5} {'lift [95% interval]':>22} signal",
    ]
    for where, row in report["cells"].items():
        for name, cell in row.items():
            lines.append(
                f"{where:16} {name:10} {cell['follows_good']:10.2f} {cell['breaks_good']:9.2f} "
                f"{cell['base_rate']:12.2f} {with_interval(cell['correct'], cell['correct_ci95']):>27} "
                f"{cell['tie']:5.2f} {with_interval(cell['lift'], cell['lift_ci95']):>22} "
                f"{'yes' if cell['signal'] else 'no'}"
            )
    best = report["recommendation"]
    if best["placement"] is None:
        lines.append(
            "No feature carries a signal in any placement with these prompts: y+ would not beat y- more often than "
            "it loses. Try more prompts (`--num_prompts`), other features (`--features_file`) or a larger model."
        )
    else:
        lines.append(
            f"Recommended: --principle_placement {best['placement']} --features {' '.join(best['features'])} "
            f"(the features with a signal there; mean y+ beats y- {best['mean_correct']:.2f} over all features)."
        )
    return "\n".join(lines)


def main(args) -> int:
    print(format_calibration(calibrate(args)))
    print(f"Wrote {args.output_dir}/calibration.json and calibration.png.")
    return 0
