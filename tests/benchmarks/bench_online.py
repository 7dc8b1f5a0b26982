"""Experiment: online SSO (`trl-sso online`) against one round of `trl-sso iterate`, with the same generation budget.

From the packaged SmolLM2-135M-Instruct on a CPU, both start from the same policy, prompts, seeds and settings (the
quickstart's: the features `trl-sso calibrate` found the model to follow, after the question; LoRA; IPO):
- **iterate**: one round: y+, y-, y_o sampled for all N prompts by the starting policy, then `N / batch` steps;
- **online**: the same N prompts, `batch` per step, sampled by the policy as it is at that step: the same number of
  responses (3 N) and of optimizer steps.
Reported: the signal of the sampled triples (accuracy on the checked features: y+ beats y-, with its Wilson interval;
per step for online, and pooled), the held-out follow rate of the start and final policies (answers with no principle
following the good sides, on the 24 held-out prompts) with the changes against the start and between methods (paired
bootstrap intervals), and the wall time of each method's generation and training (evaluations apart). Writes
`bench_online.json` and prints a table.

    python tests/benchmarks/bench_online.py                 # N=32, batch 4 (about 12 minutes on 2 cores)
    python tests/benchmarks/bench_online.py --num_prompts 4 --eval_prompts 4   # a smoke run
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

FEATURES, PLACEMENT = ["Brevity", "Bullets"], "after_question"
COMMON = (
    "--seed 42 --use_peft --lora_r 8 --lora_alpha 16 --lora_target_modules q_proj v_proj --learning_rate 5e-4 "
    "--loss_type ipo --beta 0.2 --sso_steer_coef 0.1 --sso_weight_alpha 0.66 --max_length 640 "
    "--gradient_checkpointing false --logging_steps 1 --save_strategy no --report_to none"
)


def write_prompts(path: Path, n: int) -> None:
    from trl_sso.generation.prompts import packaged_prompts

    rows = [{"prompt": f"{r['prompt']} Answer briefly."} for r in packaged_prompts("default_prompts")[:n]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_iterate(cli, root: Path, prompts: Path) -> dict:
    from trl_sso.cli.commands import parser
    from trl_sso.scripts.iterate import iterate

    out = root / "iterate"
    argv = (
        f"--output_dir {out} --rounds 1 --prompts {prompts} --features {' '.join(FEATURES)} --principle_placement "
        f"{PLACEMENT} --num_features 1 --concision_prob 0 --max_completion_length {cli.max_tokens} --batch_size 8 "
        f"--no_round_signal --max_steps {cli.num_prompts // cli.batch} --per_device_train_batch_size {cli.batch} "
        f"{COMMON}"
    ).split()
    start = time.perf_counter()
    (report,) = iterate(*parser("iterate").parse_args_and_config(args=argv))
    seconds = time.perf_counter() - start
    summary = json.loads((out / "round_1" / "data" / "summary.json").read_text())
    accuracy = summary["signal"]["accuracy"]["overall"]
    return {"accuracy": accuracy, "report": report, "seconds": seconds, "policy": str(out / "round_1" / "policy")}


def evaluate(cli, policy: str, path: Path) -> dict:
    """The held-out evaluation of `policy` (answers with no principle, scored on the features), as `iterate` runs
    it."""
    from trl_sso.generation.arguments import GenerationOptions
    from trl_sso.scripts.common import signal_stage
    from trl_sso.scripts.iterate import IterateArguments

    pipe = IterateArguments(eval_num_prompts=cli.eval_prompts, eval_max_completion_length=cli.eval_tokens)
    return signal_stage(policy, None, GenerationOptions(features=FEATURES), pipe, path)["evaluation"]


def run_online(cli, root: Path, prompts: Path) -> dict:
    from trl_sso.cli.commands import parser
    from trl_sso.offline import default_model_path
    from trl_sso.scripts.common import save_next_policy
    from trl_sso.scripts.online import train_online
    from trl_sso.signal.intervals import wilson

    out = root / "online"
    argv = (
        f"--output_dir {out / 'train'} --dataset_name {prompts} --features {' '.join(FEATURES)} "
        f"--principle_placement {PLACEMENT} --num_features 1 --concision_prob 0 "
        f"--max_completion_length {cli.max_tokens} --max_steps {cli.num_prompts // cli.batch} "
        f"--per_device_train_batch_size {cli.batch} {COMMON}"
    ).split()
    start = time.perf_counter()
    trainer = train_online(*parser("online").parse_args_and_config(args=argv))
    seconds = time.perf_counter() - start
    steps = [
        {k: v for k, v in entry.items() if k.startswith("online/") or k in ("step", "loss")}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    policy = out / "policy"
    if not policy.exists():
        save_next_policy(default_model_path(), out / "train", policy)
    # every step's triples pooled: one checked feature per record, so one pair per kept record
    pairs = [round(step["online/kept"] * cli.batch) for step in steps]
    correct = sum(round(step.get("online/accuracy", 0.0) * n) for step, n in zip(steps, pairs))
    pooled = {
        "correct": correct / max(sum(pairs), 1),
        "correct_ci95": wilson(correct, sum(pairs)),
        "pairs": sum(pairs),
    }
    return {"steps": steps, "accuracy": pooled, "seconds": seconds, "policy": str(policy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max_tokens", type=int, default=96)
    parser.add_argument("--eval_prompts", type=int, default=24)
    parser.add_argument("--eval_tokens", type=int, default=64)
    parser.add_argument("--output_dir", default="outputs/bench_online")
    cli = parser.parse_args()

    from trl_sso.signal.heldout import format_change, held_out_change
    from trl_sso.signal.intervals import with_interval

    root = Path(cli.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.jsonl"
    write_prompts(prompts, cli.num_prompts)
    from trl_sso.names import DEFAULT_MODEL_ID

    iterate_result = run_iterate(cli, root, prompts)
    online_result = run_online(cli, root, prompts)
    start_eval = evaluate(cli, DEFAULT_MODEL_ID, root / "start_signal.json")
    final_iterate = evaluate(cli, iterate_result["policy"], root / "iterate_signal.json")
    final_online = evaluate(cli, online_result["policy"], root / "online_signal.json")
    comparison = {
        "iterate_vs_start": held_out_change(final_iterate, start_eval),
        "online_vs_start": held_out_change(final_online, start_eval),
        "online_vs_iterate": held_out_change(final_online, final_iterate),
    }
    evaluations = {"start": start_eval, "iterate": final_iterate, "online": final_online}
    report = {
        "settings": vars(cli),
        "iterate": iterate_result,
        "online": online_result,
        "evaluations": evaluations,
        "comparison": comparison,
    }
    (root / "bench_online.json").write_text(json.dumps(report, indent=2))

    print(f"\nonline SSO vs one iterate round: {cli.num_prompts} prompts (3 responses each), batch {cli.batch}")
    for name, result in (("iterate", iterate_result), ("online", online_result)):
        accuracy = result["accuracy"]
        print(f"{name}: accuracy of its triples {with_interval(accuracy['correct'], accuracy['correct_ci95'])} on "
              f"{accuracy['pairs']} pairs; generation and training {result['seconds']:.0f} s")  # fmt: skip
    accuracies = [step.get("online/accuracy") for step in online_result["steps"]]
    kept = [round(step["online/kept"], 2) for step in online_result["steps"]]
    shown = ["n/a" if a is None else round(a, 2) for a in accuracies]
    print(f"online, per step: accuracy {shown}, share kept {kept}")
    start_mean = start_eval["follows_good_mean"]
    finals = {
        name: with_interval(final["follows_good_mean"], final.get("follows_good_mean_ci95"))
        for name, final in (("iterate", final_iterate), ("online", final_online))
    }
    print(f"held-out follow rate: start {start_mean:.2f}, iterate {finals['iterate']}, online {finals['online']}")
    for name, change in comparison.items():
        print(f"  {name}: {format_change(change)}")


if __name__ == "__main__":
    main()
