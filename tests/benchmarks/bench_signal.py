"""Experiment, pre-registered: does SSO move the policy differently from training on the principle pair alone?

Arms, from the packaged SmolLM2-135M-Instruct on a CPU, at the same generation budget (the same prompts, seeds, rounds
and training steps), each a `trl-sso iterate` run:
- **SSO**: v1, 3 online rounds, steering and the weight W on (`sso_steer_coef 0.1`, `sso_use_weight true`);
- **PBAA**: the same loop on the main pair alone (`sso_steer_coef 0`, `sso_use_weight false`), the paper's
  principle-based baseline;
- **unchanged**: the starting policy (round 1's evaluation of either arm: greedy answers of the same model).
The principle is Brevity (at most 40 words), which `trl-sso calibrate` found the packaged model to follow, placed
after the question; one checked feature keeps every held-out outcome a 0/1 score.

Endpoints, stated before any run (`PLAN`):
1. held-out follow rate of the final policies (answers with no principle that stay within 40 words), compared on the
   same prompts: SSO - PBAA, SSO - unchanged, PBAA - unchanged. Newcombe's paired interval, exact McNemar test. The
   difference to detect: 0.10. "No difference" only as equivalence within 0.10 (two one-sided tests: the 90%
   interval inside (-0.10, 0.10)).
2. the on-policyness gap A(x, y+) - A(x, y_o) in round 3 (mean token log-prob under the round's policy), SSO - PBAA:
   the paper's direction is SSO's y+ staying nearer the policy's own answers (a gap nearer 0). Two-sample bootstrap.
   The difference to detect: 0.25 nats per token; equivalence margin the same.
3. length drift, reported per round and arm with intervals: tokens of y+, y- and y_o, and of the held-out answers.

Sizes: a pilot (both arms, 1 round, `--pilot_prompts` training prompts, `--pilot_eval_prompts` held-out prompts)
measures the discordant share of endpoint 1 and the spread of endpoint 2; the sizes for 80% power at alpha = 0.05
follow (`trl_sso.signal.intervals.mcnemar_sample_size`, `two_sample_size`) from the pilot's estimates (the discordant
share no lower than the difference itself). The upper 95% bound of the pilot's standard deviation is recorded beside
them: sized from it, the run of 2026-12-07 would have needed 164 training prompts a round, more than the 100 the
packaged prompts hold, so the point estimate sizes it (a change made after that first plan, which is kept as
`plan_first.json`). The sizes are printed before the main run and written to `plan.json`, which a rerun reuses as it
is: the plan is fixed once made.

Everything resumes: killed, a rerun skips the finished arms and rounds (each round resumes like `trl-sso iterate`).
Run it in the background for as long as it needs:

    nohup python tests/benchmarks/bench_signal.py > bench_signal.log 2>&1 &
    python tests/benchmarks/bench_signal.py --pilot_prompts 4 --pilot_eval_prompts 4 --max_steps 2 \\
        --max_train_prompts 4 --max_eval_prompts 6 --output_dir /tmp/smoke      # a smoke run

Writes `plan.json`, `raw.jsonl` (every per-prompt and per-record figure, so that every number can be recomputed),
`bench_signal.json`, `bench_signal.md` and `bench_signal.png` under `--output_dir`.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ARMS = {
    "SSO": ["--sso_steer_coef", "0.1", "--sso_use_weight", "true"],
    "PBAA": ["--sso_steer_coef", "0.0", "--sso_use_weight", "false"],
}
PLAN = {
    "alpha": 0.05,
    "power": 0.8,
    "held_out_difference": 0.10,  # endpoint 1: the follow-rate difference to detect, and the equivalence margin
    "gap_difference": 0.25,  # endpoint 2: the A-gap difference (nats per token) to detect, and the equivalence margin
    "rounds": 3,
    "feature": "Brevity",
    "placement": "after_question",
}
SIDES = ("chosen", "rejected", "original")
HELD_OUT = Path(__file__).parent / "data" / "held_out_prompts.jsonl"


def prompt_sets(root: Path, n_train: int, n_eval: int) -> tuple[Path, Path]:
    """Training prompts: the even-numbered packaged generation prompts. Held-out prompts, none trained on: first 80
    short questions of this bench (`data/held_out_prompts.jsonl`), which admit a brief answer that the untrained
    model's answers mostly reach before the token limit; then the odd-numbered generation prompts (the training
    prompts' categories: coding and maths invite long answers); then the 40 packaged evaluation prompts (advice)."""
    from trl_sso.generation.prompts import packaged_prompts

    generation = [row["prompt"] for row in packaged_prompts("default_prompts")]
    questions = [json.loads(line)["prompt"] for line in HELD_OUT.read_text().splitlines()]
    train_pool = generation[0::2]
    held_out = questions + generation[1::2] + [row["prompt"] for row in packaged_prompts("eval_prompts")]
    if n_train > len(train_pool) or n_eval > len(held_out):
        raise SystemExit(
            f"The plan asks for {n_train} training and {n_eval} held-out prompts; the packaged sets give at most "
            f"{len(train_pool)} and {len(held_out)}."
        )
    train, evaluation = root / f"train_{n_train}.jsonl", root / f"eval_{n_eval}.jsonl"
    for path, rows in ((train, train_pool[:n_train]), (evaluation, held_out[:n_eval])):
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    return train, evaluation


def run_arm(name: str, out: Path, cli, rounds: int, n_train: int, root: Path) -> dict:
    """One arm: `trl-sso iterate` into `out` (resumed where it stopped); each round's policy also answers the first
    `--drift_eval_prompts` held-out prompts (for the length drift). Returns its `rounds.json`."""
    from trl_sso.cli.commands import parser
    from trl_sso.scripts.iterate import iterate

    train, drift = prompt_sets(root, n_train, cli.drift_eval_prompts)
    argv = [
        "--output_dir", str(out), "--rounds", str(rounds), "--prompts", str(train), "--features", PLAN["feature"],
        "--principle_placement", PLAN["placement"], "--num_features", "1", "--concision_prob", "0",
        "--max_completion_length", str(cli.max_new_tokens), "--batch_size", "8", "--eval_prompts", str(drift),
        "--eval_num_prompts", str(cli.drift_eval_prompts), "--eval_max_completion_length",
        str(cli.eval_max_completion_length), "--seed", "42", "--use_peft", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_target_modules", "q_proj", "v_proj", "--max_steps", str(cli.max_steps),
        "--per_device_train_batch_size", "2", "--learning_rate", "5e-4", "--loss_type", "ipo", "--beta", "0.2",
        "--sso_weight_alpha", "0.66", "--max_length", "640", "--gradient_checkpointing", "false", "--logging_steps",
        "1", "--save_steps", "4", "--report_to", "none", *ARMS[name],
    ]  # fmt: skip
    done = (out / "rounds.json").exists() and (out / f"round_{rounds}" / "report.json").exists()
    if not done:
        start = time.perf_counter()
        iterate(*parser("iterate").parse_args_and_config(args=argv))
        (out / "seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    return json.loads((out / "rounds.json").read_text())


def final_evaluation(folder: Path, policies: dict[str, str], n_eval: int, cli, root: Path) -> dict:
    """The unchanged policy and each arm's final policy answer the same `n_eval` held-out prompts with no principle
    (`trl-sso evaluate`, once: reused by a rerun). Returns, per arm, the per-prompt 0/1 outcomes and tokens."""
    from trl_sso.names import DEFAULT_MODEL_ID
    from trl_sso.scripts.evaluate import EvaluateArguments, evaluate_models

    path = folder / "evaluation.json"
    if not path.exists():
        _, held_out = prompt_sets(root, 1, n_eval)
        args = EvaluateArguments(
            model_name_or_path=[DEFAULT_MODEL_ID, *policies.values()],
            prompts=str(held_out),
            features=[PLAN["feature"]],
            max_completion_length=cli.eval_max_completion_length,
            output_dir=str(folder),
        )
        evaluate_models(args)
    rows = json.loads(path.read_text())["models"]
    return {
        name: {"held_out": row["follows_good_per_prompt"], "held_out_tokens": row["tokens_per_prompt"]}
        for name, row in zip(["unchanged", *policies], rows)
    }


def per_round(out: Path, t: int) -> dict:
    """Round `t`'s raw figures: per record, the A gaps and token counts of y+, y-, y_o; per held-out prompt, the 0/1
    outcome and the answer's tokens (of the policy that starts the round)."""
    from trl_sso.data import load_sso_dataset

    signal = json.loads((out / f"round_{t}" / "signal.json").read_text())
    values = signal["onpolicy"]["per_record"]
    data = load_sso_dataset(str(out / f"round_{t}" / "data"))
    return {
        "gap_chosen": [a - o for a, o in zip(values["chosen"], values["original"])],
        "gap_rejected": [a - o for a, o in zip(values["rejected"], values["original"])],
        **{f"{side}_tokens": list(data[f"{side}_tokens"]) for side in SIDES},
        "held_out": signal["evaluation"]["follows_good_per_prompt"],
        "held_out_tokens": signal["evaluation"]["tokens_per_prompt"],
    }


def paired(after: list, before: list) -> dict:
    """Endpoint 1 for two policies on the same prompts: the change, its 95% interval and exact McNemar test, and its
    90% interval for the equivalence test."""
    from trl_sso.signal.intervals import Z90, equivalent, paired_difference, paired_score_change, paired_table

    result = paired_score_change(after, before)
    result["ci90"] = paired_difference(paired_table(after, before), z=Z90)
    result["equivalent"] = equivalent(result["ci90"], PLAN["held_out_difference"])
    return result


def independent(first: list, second: list, margin: float) -> dict:
    """A difference of means of two independent samples: bootstrap 95% and 90% intervals, significance and
    equivalence within `margin`."""
    from trl_sso.signal.intervals import Z90, bootstrap_difference, equivalent, excludes_zero

    ci95, ci90 = bootstrap_difference(first, second), bootstrap_difference(first, second, z=Z90)
    return {
        "change": sum(first) / len(first) - sum(second) / len(second),
        "ci95": ci95,
        "ci90": ci90,
        "significant": excludes_zero(ci95),
        "equivalent": equivalent(ci90, margin),
        "sizes": [len(first), len(second)],
    }


def pilot(cli, root: Path) -> dict:
    """Both arms for 1 round at the pilot's size, their policies on `--pilot_eval_prompts` held-out prompts: the
    discordant share of endpoint 1 and the spread of endpoint 2."""
    from trl_sso.signal.intervals import wilson

    policies = {}
    for name in ARMS:
        out = root / "pilot" / name.lower()
        run_arm(name, out, cli, 1, cli.pilot_prompts, root)
        policies[name] = str(out / "round_1" / "policy")
    final = final_evaluation(root / "pilot", policies, cli.pilot_eval_prompts, cli, root)
    n = len(final["unchanged"]["held_out"])
    comparisons = {
        "SSO - PBAA": (final["SSO"]["held_out"], final["PBAA"]["held_out"]),
        "SSO - unchanged": (final["SSO"]["held_out"], final["unchanged"]["held_out"]),
        "PBAA - unchanged": (final["PBAA"]["held_out"], final["unchanged"]["held_out"]),
    }
    discordant = {}
    for label, (a, b) in comparisons.items():
        k = sum(x != y for x, y in zip(a, b))
        discordant[label] = {"share": k / n, "ci95": wilson(k, n), "change": (sum(a) - sum(b)) / n}
    gaps = per_round(root / "pilot" / "sso", 1)["gap_chosen"]
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1))
    # the upper 95% bound of a standard deviation (chi-square with n-1 degrees of freedom, Wilson-Hilferty)
    df = len(gaps) - 1
    chi_low = df * (1 - 2 / (9 * df) - 1.959963984540054 * math.sqrt(2 / (9 * df))) ** 3
    return {
        "train_prompts": cli.pilot_prompts,
        "eval_prompts": n,
        "discordant": discordant,
        "gap_sd": sd,
        "gap_sd_upper": sd * math.sqrt(df / chi_low),
        "gap_records": len(gaps),
    }


def make_plan(measured: dict, cli) -> dict:
    """The sizes for 80% power at 5% (see the module docstring). Held-out prompts: for SSO - PBAA, the comparison the
    difference of 0.10 is stated for, from the pilot's discordant share (at least the difference itself); the
    comparisons with the unchanged policy are expected to be larger and use the same prompts. Training prompts: from
    the pilot's standard deviation of the A gap (its upper 95% bound is recorded beside it, with the size it asks)."""
    from trl_sso.signal.intervals import mcnemar_sample_size, two_sample_size

    delta = PLAN["held_out_difference"]
    share = max(measured["discordant"]["SSO - PBAA"]["share"], delta)
    return {
        **PLAN,
        "pilot": measured,
        "discordant_assumed": share,
        "eval_prompts": mcnemar_sample_size(share, delta),
        "train_prompts": two_sample_size(measured["gap_sd"], PLAN["gap_difference"]),
        "train_prompts_at_sd_upper": two_sample_size(measured["gap_sd_upper"], PLAN["gap_difference"]),
        "max_steps": cli.max_steps,
        "max_new_tokens": cli.max_new_tokens,
        "eval_max_completion_length": cli.eval_max_completion_length,
        "drift_eval_prompts": cli.drift_eval_prompts,
    }


def analyse(root: Path, plan: dict, final: dict) -> tuple[dict, list[dict]]:
    """Every endpoint from the raw figures (`final`: the held-out evaluation of the final policies), and the raw rows
    (`raw.jsonl`)."""
    from trl_sso.signal.intervals import bootstrap_mean, score_mean

    rounds = plan["rounds"]
    raw, arms = [], {}
    for name in ARMS:
        out = root / name.lower()
        arms[name] = {"rounds": [per_round(out, t) for t in range(1, rounds + 1)], "final": final[name]}
        for t, row in enumerate(arms[name]["rounds"], 1):
            for i in range(len(row["gap_chosen"])):
                figures = {key: row[key][i] for key in ("gap_chosen", "gap_rejected", *(f"{s}_tokens" for s in SIDES))}
                raw.append({"arm": name, "round": t, "record": i, **figures})
            for i, (score, tokens) in enumerate(zip(row["held_out"], row["held_out_tokens"])):
                raw.append(
                    {"arm": name, "policy": f"start of round {t}", "prompt": i, "follows": score, "tokens": tokens}
                )
        for i, (score, tokens) in enumerate(
            zip(arms[name]["final"]["held_out"], arms[name]["final"]["held_out_tokens"])
        ):
            raw.append({"arm": name, "policy": "final", "prompt": i, "follows": score, "tokens": tokens})
    for i, (score, tokens) in enumerate(zip(final["unchanged"]["held_out"], final["unchanged"]["held_out_tokens"])):
        raw.append({"arm": "unchanged", "policy": "final", "prompt": i, "follows": score, "tokens": tokens})
    start = final["unchanged"]["held_out"]
    sso, pbaa = arms["SSO"], arms["PBAA"]
    endpoints = {
        "held_out": {
            "SSO - PBAA": paired(sso["final"]["held_out"], pbaa["final"]["held_out"]),
            "SSO - unchanged": paired(sso["final"]["held_out"], start),
            "PBAA - unchanged": paired(pbaa["final"]["held_out"], start),
        },
        "gap": {
            f"round {t}": independent(
                sso["rounds"][t - 1]["gap_chosen"], pbaa["rounds"][t - 1]["gap_chosen"], PLAN["gap_difference"]
            )
            for t in range(1, rounds + 1)
        },
    }
    levels = {
        "unchanged": {
            "held_out": score_mean(start),
            "held_out_tokens": _mean_ci(final["unchanged"]["held_out_tokens"]),
        }
    }
    drift = {}
    for name, arm in arms.items():
        levels[name] = {
            "held_out": score_mean(arm["final"]["held_out"]),
            "held_out_tokens": _mean_ci(arm["final"]["held_out_tokens"]),
        }
        drift[name] = [
            {
                "round": t,
                **{side: _mean_ci(row[f"{side}_tokens"]) for side in SIDES},
                "held_out_tokens": _mean_ci(row["held_out_tokens"]),
                "held_out_follows": score_mean(row["held_out"]),
                "gap_chosen": (_mean(row["gap_chosen"]), bootstrap_mean(row["gap_chosen"])),
            }
            for t, row in enumerate(arm["rounds"], 1)
        ]
        last = json.loads((root / name.lower() / "final_signal.json").read_text())["evaluation"]
        drift[name].append(
            {
                "round": "final",
                "held_out_tokens": _mean_ci(last["tokens_per_prompt"]),
                "held_out_follows": score_mean(last["follows_good_per_prompt"]),
            }
        )
    return {"endpoints": endpoints, "levels": levels, "drift": drift}, raw


def _mean(values):
    return sum(values) / len(values) if values else None


def _mean_ci(values):
    from trl_sso.signal.intervals import bootstrap_mean

    return _mean(values), bootstrap_mean(values)


def _ci(pair_or_value, interval=None, digits=2):
    from trl_sso.signal.intervals import with_interval

    if isinstance(pair_or_value, (tuple, list)):
        pair_or_value, interval = pair_or_value
    return with_interval(pair_or_value, interval, digits)


def verdict(result: dict, margin: float) -> str:
    if result["significant"]:
        return "**different**"
    if result["equivalent"]:
        return f"equivalent within ±{margin:g}"
    return "inconclusive (neither different nor equivalent)"


def markdown(plan: dict, analysis: dict) -> str:
    pilot = plan["pilot"]
    lines = [
        f"Plan (fixed before the main run, from a pilot of {pilot['train_prompts']} training and "
        f"{pilot['eval_prompts']} held-out prompts): {plan['train_prompts']} training prompts a round, "
        f"{plan['eval_prompts']} held-out prompts, {plan['rounds']} rounds, {plan['max_steps']} steps a round; 80% "
        f"power at alpha 0.05 to detect {plan['held_out_difference']} in held-out follow rate and "
        f"{plan['gap_difference']} in the A gap.",
        "",
        "| comparison (final policies, same prompts) | change in held-out follow rate [95% CI] | exact McNemar p | "
        "90% CI | verdict |",
        "|---|---|---|---|---|",
    ]
    margin = plan["held_out_difference"]
    for label, r in analysis["endpoints"]["held_out"].items():
        p = "< 0.001" if r["p_value"] < 0.001 else f"{r['p_value']:.3f}"
        lines.append(
            f"| {label} | {_ci(r['change'], r['ci95'])} | {p} | {_ci(r['change'], r['ci90'])} | {verdict(r, margin)} |"
        )
    lines += ["", "| A(x, y+) - A(x, y_o), SSO - PBAA | difference [95% CI] | 90% CI | verdict |", "|---|---|---|---|"]
    for label, r in analysis["endpoints"]["gap"].items():
        lines.append(
            f"| {label} | {_ci(r['change'], r['ci95'])} | {_ci(r['change'], r['ci90'])} | "
            f"{verdict(r, plan['gap_difference'])} |"
        )
    lines += [
        "",
        "| arm | round | tokens y+ | tokens y- | tokens y_o | A gap y+ | held-out follows | held-out tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    levels = analysis["levels"]["unchanged"]
    lines.append(
        f"| unchanged | start | | | | | {_ci(levels['held_out'])} | {_ci(levels['held_out_tokens'], digits=0)} |"
    )
    for name, rows in analysis["drift"].items():
        for row in rows:
            cells = [_ci(row[side], digits=0) if side in row else "" for side in SIDES]
            gap = _ci(row["gap_chosen"]) if "gap_chosen" in row else ""
            lines.append(
                f"| {name} | {row['round']} | {' | '.join(cells)} | {gap} | {_ci(row['held_out_follows'])} | "
                f"{_ci(row['held_out_tokens'], digits=0)} |"
            )
    lines.append("")
    lines.append("Rounds show the data of round t and the held-out answers of the policy that generated it.")
    return "\n".join(lines)


def plot(analysis: dict, path: Path) -> None:
    from trl_sso.signal.plots import _error_bars, _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for offset, (name, rows) in zip((-0.06, 0.06), analysis["drift"].items()):
        xs = [i + 1 + offset for i in range(len(rows))]
        for ax, key in zip(axes, ("held_out_follows", "held_out_tokens")):
            ys = [row[key][0] for row in rows]
            cis = [row[key][1] for row in rows]
            ax.errorbar(xs, ys, yerr=_error_bars(ys, cis), marker="o", capsize=4, label=name)
        chosen = [row for row in rows if "chosen" in row]
        ys = [row["chosen"][0] for row in chosen]
        axes[2].errorbar(
            xs[: len(chosen)], ys, yerr=_error_bars(ys, [row["chosen"][1] for row in chosen]), marker="o", label=name
        )
    titles = ("held-out answers within 40 words", "held-out answer tokens", "tokens of y+ in the round's data")
    last = len(next(iter(analysis["drift"].values())))
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(1, last + 1), [*map(str, range(1, last)), "final"])
        ax.set_xlabel("round (policy at its start; then the final one)")
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, 1)
    fig.suptitle("bars: 95% intervals", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilot_prompts", type=int, default=16, help="Training prompts of the pilot's round.")
    parser.add_argument("--pilot_eval_prompts", type=int, default=40, help="Held-out prompts of the pilot.")
    parser.add_argument("--max_steps", type=int, default=12, help="Training steps a round.")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="Token limit of the generated responses.")
    parser.add_argument("--eval_max_completion_length", type=int, default=160, help="Token limit of held-out answers.")
    parser.add_argument("--drift_eval_prompts", type=int, default=24, help="Held-out prompts of each round's policy.")
    parser.add_argument("--max_train_prompts", type=int, help="Cap the plan's training prompts (a smoke run).")
    parser.add_argument("--max_eval_prompts", type=int, help="Cap the plan's held-out prompts (a smoke run).")
    parser.add_argument("--output_dir", default="outputs/bench_signal")
    cli = parser.parse_args()
    root = Path(cli.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plan_path = root / "plan.json"
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
        print(f"Reusing the fixed plan {plan_path}.")
    else:
        plan = make_plan(pilot(cli, root), cli)
        if cli.max_train_prompts or cli.max_eval_prompts:
            plan["capped"] = True  # a smoke run: not the size the power computation asked for
            plan["train_prompts"] = min(plan["train_prompts"], cli.max_train_prompts or plan["train_prompts"])
            plan["eval_prompts"] = min(plan["eval_prompts"], cli.max_eval_prompts or plan["eval_prompts"])
        plan_path.write_text(json.dumps(plan, indent=2))
    print(
        f"Plan: {plan['train_prompts']} training prompts a round and {plan['eval_prompts']} held-out prompts "
        f"(80% power at alpha 0.05 for a held-out difference of {plan['held_out_difference']} and an A-gap "
        f"difference of {plan['gap_difference']}; pilot: {json.dumps(plan['pilot']['discordant'])}, gap sd "
        f"{plan['pilot']['gap_sd']:.3f}, upper {plan['pilot']['gap_sd_upper']:.3f})."
        + (" Capped: a smoke run." if plan.get("capped") else ""),
        flush=True,
    )
    for key in ("max_steps", "max_new_tokens", "eval_max_completion_length", "drift_eval_prompts"):
        setattr(cli, key, plan[key])  # the plan's settings, whatever this invocation was given
    for name in ARMS:
        run_arm(name, root / name.lower(), cli, plan["rounds"], plan["train_prompts"], root)
    policies = {name: str(root / name.lower() / f"round_{plan['rounds']}" / "policy") for name in ARMS}
    final = final_evaluation(root / "final", policies, plan["eval_prompts"], cli, root)
    analysis, raw = analyse(root, plan, final)
    table = markdown(plan, analysis)
    print(table)
    seconds = {name: (root / name.lower() / "seconds.txt").read_text().strip() for name in ARMS}
    print(f"This invocation took {(time.perf_counter() - start) / 60:.1f} minutes; arms (seconds): {seconds}.")
    (root / "raw.jsonl").write_text("".join(json.dumps(row) + "\n" for row in raw))
    (root / "bench_signal.json").write_text(json.dumps({"plan": plan, **analysis}, indent=2))
    (root / "bench_signal.md").write_text(table + "\n")
    plot(analysis, root / "bench_signal.png")
    print(f"Wrote {root}/plan.json, raw.jsonl, bench_signal.json, bench_signal.md and bench_signal.png.")


if __name__ == "__main__":
    main()
