"""Experiment: does SSO keep its self-generated signal accurate and on-policy over online rounds, where training on the
principle pair alone (PBAA) does not?

From the packaged SmolLM2-135M-Instruct on a CPU, it runs `trl-sso iterate` twice from the same start, seeds and
prompts:
- **SSO**: the policy objective with steering and the weight W on (`sso_steer_coef 0.1`, `sso_use_weight true`);
- **PBAA**: the same loop with steering and W off (`sso_steer_coef 0`, `sso_use_weight false`): IPO on
  (x; y+ > y-), the paper's principle-based baseline.
The principles are those `trl-sso calibrate` found the packaged model to follow (`FEATURES`), placed where it follows
them (`PLACEMENT`), so that round 1's pairs carry a real signal.

Per round and method: the accuracy of the round's data on the checked features (y+ beats y-, Wilson interval), the
on-policyness gap A(x, y+) - A(x, y_o) under the round's policy and the mean tokens of y+ (bootstrap intervals), and
the held-out evaluation of the round's policy (answers with no principle following the good sides), then of the final
policies. Then SSO - PBAA for each figure, with its 95% interval and whether it is significant (the interval excludes
0). Finally the packaged model as a pairwise judge (`trl_sso.signal.judge`, both orders): its agreement with the
checkers on round 1's pairs, and its verdicts on pairs generated with the qualitative features.
Prints the tables and writes `bench_signal.json`, `bench_signal.md` and `bench_signal.png`.

    python tests/benchmarks/bench_signal.py       # 3 rounds, 24 prompts a round (under 60 minutes, 2 cores)
    python tests/benchmarks/bench_signal.py --rounds 1 --num_prompts 4 --max_steps 2 --judge_prompts 2   # a smoke run

The prompts are the first packaged generation prompts with "Answer briefly." appended, so that most responses end
before the token limit. A finished run is skipped when run again (the rounds resume like any `trl-sso iterate`).
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

METHODS = {
    "SSO": ["--sso_steer_coef", "0.1", "--sso_use_weight", "true"],
    "PBAA": ["--sso_steer_coef", "0.0", "--sso_use_weight", "false"],
}
# What `trl-sso calibrate` found the packaged model to follow (README, "Which principles does my model follow?")
PLACEMENT = "after_question"
FEATURES = ["Brevity", "Bullets"]


def write_prompts(path: Path, n: int) -> None:
    from trl_sso.generation.prompts import packaged_prompts

    rows = [{"prompt": f"{r['prompt']} Answer briefly."} for r in packaged_prompts("default_prompts")[:n]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_method(name: str, cli: argparse.Namespace, root: Path, prompts: Path) -> dict:
    from trl_sso.cli.commands import parser
    from trl_sso.scripts.iterate import iterate

    out = root / name.lower()
    argv = [
        "--output_dir", str(out), "--rounds", str(cli.rounds), "--prompts", str(prompts), "--features", *FEATURES,
        "--principle_placement", PLACEMENT, "--num_features", "1", "--concision_prob", "0", "--max_completion_length",
        str(cli.max_new_tokens), "--batch_size", "8", "--eval_num_prompts", str(cli.eval_prompts),
        "--eval_max_completion_length", str(cli.eval_max_completion_length), "--seed", "42", "--use_peft",
        "--lora_r", "8",
        "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj", "--max_steps", str(cli.max_steps),
        "--per_device_train_batch_size", "2", "--learning_rate", "5e-4", "--loss_type", "ipo", "--beta", "0.2",
        "--sso_weight_alpha", "0.66", "--max_length", "640", "--gradient_checkpointing", "false",
        "--logging_steps", "1", "--save_steps", "4", "--report_to", "none", *METHODS[name],
    ]  # fmt: skip
    if cli.model_name_or_path:
        argv += ["--model_name_or_path", cli.model_name_or_path]
    start = time.perf_counter()
    iterate(*parser("iterate").parse_args_and_config(args=argv))
    rounds = json.loads((out / "rounds.json").read_text())
    rounds["seconds"] = time.perf_counter() - start
    for row in rounds["rounds"]:  # the per-record figures that the differences between methods need
        records = json.loads((out / f"round_{row['round']}" / "signal.json").read_text())
        row["per_prompt_eval"] = records["evaluation"].get("follows_good_per_prompt")
        row["chosen_tokens"] = _column(out / f"round_{row['round']}" / "data", "chosen_tokens")
    return rounds


def _column(folder: Path, column: str) -> list:
    from trl_sso.data import load_sso_dataset

    return list(load_sso_dataset(str(folder))[column])


def _half(interval):
    return None if interval is None else (interval[1] - interval[0]) / 2


def differences(results: dict) -> list[dict]:
    """SSO - PBAA per round: accuracy (Newcombe), held-out follow rate (paired bootstrap: the same prompts), the
    on-policyness gap (independent samples: the half-widths of the two intervals combined in quadrature) and the mean
    tokens of y+ (bootstrap of each method's records, combined alike)."""
    from trl_sso.signal.intervals import bootstrap_mean, excludes_zero, paired_change, share_difference

    sso, pbaa = results["SSO"], results["PBAA"]
    rows = []
    for a, b in zip(sso["rounds"], pbaa["rounds"]):
        row = {"round": a["round"]}
        if a["accuracy_pairs"] and b["accuracy_pairs"]:
            k = [round(r["accuracy"] * r["accuracy_pairs"]) for r in (a, b)]
            row["accuracy"] = a["accuracy"] - b["accuracy"]
            row["accuracy_ci95"] = share_difference(k[0], a["accuracy_pairs"], k[1], b["accuracy_pairs"])
        if a.get("per_prompt_eval") and b.get("per_prompt_eval"):
            row["held_out"], row["held_out_ci95"], _ = paired_change(a["per_prompt_eval"], b["per_prompt_eval"])
        if a["onpolicy_gap"] is not None and b["onpolicy_gap"] is not None and a.get("onpolicy_gap_ci95"):
            d, h = (
                a["onpolicy_gap"] - b["onpolicy_gap"],
                math.hypot(_half(a["onpolicy_gap_ci95"]), _half(b["onpolicy_gap_ci95"])),
            )
            row["onpolicy_gap"], row["onpolicy_gap_ci95"] = d, [d - h, d + h]
        ta, tb = a["chosen_tokens"], b["chosen_tokens"]
        d = sum(ta) / len(ta) - sum(tb) / len(tb)
        h = math.hypot(_half(bootstrap_mean(ta)), _half(bootstrap_mean(tb)))
        row["chosen_tokens"], row["chosen_tokens_ci95"] = d, [d - h, d + h]
        for key in ("accuracy", "held_out", "onpolicy_gap", "chosen_tokens"):
            if key in row:
                row[f"{key}_significant"] = excludes_zero(row[f"{key}_ci95"])
        rows.append(row)
    final = [results[m]["final_evaluation"] for m in ("SSO", "PBAA")]
    if all(f and f.get("follows_good_per_prompt") for f in final):
        change, interval, significant = paired_change(*(f["follows_good_per_prompt"] for f in final))
        rows.append(
            {"round": "final", "held_out": change, "held_out_ci95": interval, "held_out_significant": significant}
        )
    return rows


def judge_step(cli: argparse.Namespace, root: Path, prompts: Path) -> dict:
    """The packaged model as its own judge: agreement with the checkers on round 1's pairs of both methods (the same
    data: round 1 starts from the same policy), and its verdicts on pairs generated with the qualitative features."""
    from trl_sso.data import load_sso_dataset
    from trl_sso.generation import GenerateArguments, generate
    from trl_sso.principles import known_features
    from trl_sso.signal.judge import judge_report, make_judge

    features = known_features()
    judge = make_judge(cli.model_name_or_path or "HuggingFaceTB/SmolLM2-135M-Instruct", batch_size=4)
    verifiable = load_sso_dataset(str(root / "sso" / "round_1" / "data")).to_list()
    qualitative_dir = root / "qualitative"
    args = GenerateArguments(
        output_dir=str(qualitative_dir),
        prompts=str(prompts),
        num_prompts=cli.judge_prompts,
        features=["qualitative"],
        num_features=1,
        concision_prob=0.0,
        principle_placement=PLACEMENT,
        max_completion_length=cli.max_new_tokens,
        batch_size=8,
        seed=42,
        model_name_or_path=cli.model_name_or_path,
    )
    qualitative, _ = generate(args)
    return {
        "verifiable_round_1": judge_report(judge, verifiable, features),
        "qualitative": judge_report(judge, qualitative.to_list(), features),
    }


def _ci(value, interval, digits=2):
    from trl_sso.signal.intervals import with_interval

    return with_interval(value, interval, digits)


def markdown(results: dict, diffs: list[dict], judged: dict | None) -> str:
    lines = [
        "| method | round | y+ beats y- [95% CI] | ties | A(x, y+) - A(x, y_o) [95% CI] | tokens y+ / y- / y_o | "
        "held-out answers following the good side [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rounds in results.items():
        for row in rounds["rounds"]:
            tokens = " / ".join(f"{row['mean_tokens'][k]:.0f}" for k in ("chosen", "rejected", "original"))
            lines.append(
                f"| {name} | {row['round']} | {_ci(row['accuracy'], row.get('accuracy_ci95'))} | "
                f"{row['accuracy_ties']:.2f} | {_ci(row['onpolicy_gap'], row.get('onpolicy_gap_ci95'))} | {tokens} | "
                f"{_ci(row['eval_follows_good'], row.get('eval_follows_good_ci95'))} |"
            )
        final = rounds["final_evaluation"]
        change = _ci(final.get("change_vs_start"), final.get("change_vs_start_ci95"))
        verdict = "significant" if final.get("change_vs_start_significant") else "not significant"
        held = _ci(final["follows_good_mean"], final.get("follows_good_mean_ci95"))
        lines.append(f"| {name} | final policy | | | | | {held} (change against the start {change}, {verdict}) |")
    lines += ["", "| SSO - PBAA | y+ beats y- | held-out following | A gap | tokens of y+ |"]
    lines.append("|---|---|---|---|---|")
    for row in diffs:
        cells = []
        for key in ("accuracy", "held_out", "onpolicy_gap", "chosen_tokens"):
            if key not in row:
                cells.append("")
                continue
            verdict = "**significant**" if row[f"{key}_significant"] else "not significant"
            cells.append(f"{_ci(row[key], row[f'{key}_ci95'])} {verdict}")
        lines.append(f"| round {row['round']} | " + " | ".join(cells) + " |")
    if judged:
        agreement = judged["verifiable_round_1"]["agreement_with_checkers"]
        bias = judged["qualitative"]["position_bias"]
        quality = judged["qualitative"]["overall"]
        lines += [
            "",
            f"Judge (the packaged model, both orders): agreement with the checkers on {agreement['pairs']} decided "
            f"round-1 pairs {_ci(agreement['agreement'], agreement['agreement_ci95'])}; on {quality['pairs']} "
            f"qualitative pairs it prefers y+ in {_ci(quality['correct'], quality['correct_ci95'])}, ties "
            f"{quality['tie']:.2f} (order-dependent verdicts), picks answer A in "
            f"{_ci(bias['first_answer_chosen'], bias['first_answer_chosen_ci95'])} of its verdicts.",
        ]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    from trl_sso.signal.plots import _error_bars, _pyplot

    plt = _pyplot()
    held_out = "held-out answers following the good side\n(policy at the start of each round, then the final one)"
    panels = {  # title -> (value, interval, share axis)
        "signal accuracy (y+ beats y-)": ("accuracy", True),
        "A(x, y+) - A(x, y_o)": ("onpolicy_gap", False),
        held_out: ("eval_follows_good", True),
    }
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (title, (key, is_share)) in zip(axes, panels.items()):
        for offset, (name, rounds) in zip((-0.06, 0.06), results.items()):
            xs = [r["round"] + offset for r in rounds["rounds"]]
            ys = [r[key] for r in rounds["rounds"]]
            cis = [r.get(f"{key}_ci95") for r in rounds["rounds"]]
            if key == "eval_follows_good":
                final = rounds["final_evaluation"]
                xs, ys, cis = (
                    xs + [xs[-1] + 1],
                    ys + [final["follows_good_mean"]],
                    cis + [final.get("follows_good_mean_ci95")],
                )
            ax.errorbar(xs, ys, yerr=_error_bars(ys, cis), marker="o", capsize=4, label=name)
        ax.set_title(title, fontsize=9)
        if is_share:
            ax.set_ylim(0, 1)
    ax = axes[3]
    for offset, (name, rounds) in zip((-0.06, 0.06), results.items()):
        ax.plot(
            [r["round"] + offset for r in rounds["rounds"]],
            [r["mean_tokens"]["chosen"] for r in rounds["rounds"]],
            marker="o",
            label=name,
        )
    ax.set_title("mean tokens of y+", fontsize=9)
    last = len(next(iter(results.values()))["rounds"])
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(range(1, last + 2), [*map(str, range(1, last + 1)), "final"])
        ax.legend(fontsize=8)
    fig.suptitle("bars: 95% intervals", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num_prompts", type=int, default=24)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--max_steps", type=int, default=12)
    parser.add_argument("--eval_prompts", type=int, default=24)
    parser.add_argument("--eval_max_completion_length", type=int, default=64)
    parser.add_argument("--judge_prompts", type=int, default=16, help="Prompts of the qualitative data judged.")
    parser.add_argument("--skip_judge", action="store_true")
    parser.add_argument("--output_dir", default="outputs/bench_signal")
    parser.add_argument("--model_name_or_path", help="Starting policy (default: the packaged SmolLM2-135M-Instruct).")
    cli = parser.parse_args()
    root = Path(cli.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.jsonl"
    write_prompts(prompts, cli.num_prompts)
    start = time.perf_counter()
    results = {name: run_method(name, cli, root, prompts) for name in METHODS}
    judged = None if cli.skip_judge else judge_step(cli, root, prompts)
    minutes = (time.perf_counter() - start) / 60
    diffs = differences(results)
    table = markdown(results, diffs, judged)
    print(table)
    parts = ", ".join(f"{name} {rounds['seconds'] / 60:.1f}" for name, rounds in results.items())
    print(f"Took {minutes:.1f} minutes ({parts}).")
    report = {**results, "differences": diffs, "judge": judged, "minutes": minutes}
    (root / "bench_signal.json").write_text(json.dumps(report, indent=2))
    (root / "bench_signal.md").write_text(table + "\n")
    plot(results, root / "bench_signal.png")
    print(f"Wrote {root / 'bench_signal.json'}, bench_signal.md and bench_signal.png.")


if __name__ == "__main__":
    main()
