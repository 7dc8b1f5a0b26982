"""Experiment: does SSO keep its self-generated signal accurate and on-policy over online rounds, where training on the
principle pair alone (PBAA) does not?

From the packaged SmolLM2-135M-Instruct on a CPU, with verifiable features only, it runs `trl-sso iterate` twice from
the same start, seeds and prompts:
- **SSO**: the policy objective with steering and the weight W on (`sso_steer_coef 0.1`, `sso_use_weight true`);
- **PBAA**: the same loop with steering and W off (`sso_steer_coef 0`, `sso_use_weight false`): DPO/IPO on
  (x; y+ > y-), the paper's principle-based baseline.
Per round and method it reports the signal of the round's data (accuracy on the verifiable features: correct and
tie shares; the on-policyness gap A(x, y+) - A(x, y_o) under the round's policy; the mean tokens of y+ / y-), and
the held-out evaluation of the round's policy (the share of answers following the good sides, no principle given),
then of the final policies. Prints the table and writes `bench_signal.json` and `bench_signal.png`.

    python tests/benchmarks/bench_signal.py       # 3 rounds, 16 prompts a round (about 30 minutes, 2 cores)
    python tests/benchmarks/bench_signal.py --rounds 1 --num_prompts 4 --max_steps 2   # a smoke run

The prompts are the first packaged generation prompts with "Answer briefly." appended, so that responses end before
the token limit; a finished run is skipped when run again (the rounds resume like any `trl-sso iterate`).
"""

import argparse
import json
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
FEATURES = ["Bullets", "Summary", "Lowercase", "Keyword", "JSON", "Closing"]


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
        "--num_features", "1", "--concision_prob", "0", "--max_new_tokens", str(cli.max_new_tokens),
        "--batch_size", "8", "--eval_num_prompts", str(cli.eval_prompts), "--eval_max_new_tokens",
        str(cli.eval_max_new_tokens), "--seed", "42", "--use_peft", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_target_modules", "q_proj", "v_proj", "--max_steps", str(cli.max_steps),
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
    return rounds


def table(results: dict) -> str:
    from trl_sso.scripts.iterate import format_rounds

    return "\n\n".join(f"{name}\n{format_rounds(rounds)}" for name, rounds in results.items())


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held_out = "held-out answers following the good side\n(policy at the start of each round, then the final one)"
    panels = {
        "signal accuracy (y+ beats y-)": lambda r: r["accuracy"],
        "A(x, y+) - A(x, y_o)": lambda r: r["onpolicy_gap"],
        "mean tokens of y+": lambda r: r["mean_tokens"]["chosen"],
        held_out: lambda r: r["eval_follows_good"],
    }
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (title, value) in zip(axes, panels.items()):
        for name, rounds in results.items():
            xs = [r["round"] for r in rounds["rounds"]]
            ys = [value(r) for r in rounds["rounds"]]
            if title == held_out:
                xs, ys = xs + [xs[-1] + 1], ys + [rounds["final_evaluation"]["follows_good_mean"]]
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round")
        ax.set_xticks(range(1, len(next(iter(results.values()))["rounds"]) + 2))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num_prompts", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--max_steps", type=int, default=8)
    parser.add_argument("--eval_prompts", type=int, default=12)
    parser.add_argument("--eval_max_new_tokens", type=int, default=64)
    parser.add_argument("--output_dir", default="outputs/bench_signal")
    parser.add_argument("--model_name_or_path", help="Starting policy (default: the packaged SmolLM2-135M-Instruct).")
    cli = parser.parse_args()
    root = Path(cli.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.jsonl"
    write_prompts(prompts, cli.num_prompts)
    start = time.perf_counter()
    results = {name: run_method(name, cli, root, prompts) for name in METHODS}
    minutes = (time.perf_counter() - start) / 60
    print(table(results))
    parts = ", ".join(f"{name} {rounds['seconds'] / 60:.1f}" for name, rounds in results.items())
    print(f"Took {minutes:.1f} minutes ({parts}).")
    (root / "bench_signal.json").write_text(json.dumps({**results, "minutes": minutes}, indent=2))
    plot(results, root / "bench_signal.png")
    print(f"Wrote {root / 'bench_signal.json'} and {root / 'bench_signal.png'}.")


if __name__ == "__main__":
    main()
