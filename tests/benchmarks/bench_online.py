"""Experiment: online SSO (`trl-sso online`) against one round of `trl-sso iterate`, with the same generation budget.

From the packaged SmolLM2-135M-Instruct on a CPU, both start from the same policy, prompts, seeds and settings (the
quickstart's: the features `trl-sso calibrate` found the model to follow, after the question; LoRA; IPO):
- **iterate**: one round: y+, y-, y_o sampled for all N prompts by the starting policy, then `N / batch` steps;
- **online**: the same N prompts, `batch` per step, sampled by the policy as it is at that step: the same number of
  responses (3 N) and of optimizer steps.
Reported: the signal of the sampled triples (accuracy on the checked features: y+ beats y-, with its Wilson interval;
per step for online), the held-out follow rate of the final policies (answers with no principle following the good
sides, on the 24 held-out prompts) with its change against the start and between methods (paired bootstrap
intervals), and the wall time of each. Writes `bench_online.json` and prints a table.

    python tests/benchmarks/bench_online.py                 # N=16, batch 4 (about 20 minutes on 2 cores)
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
        f"--eval_num_prompts {cli.eval_prompts} --eval_max_completion_length {cli.eval_tokens} "
        f"--max_steps {cli.num_prompts // cli.batch} --per_device_train_batch_size {cli.batch} {COMMON}"
    ).split()
    start = time.perf_counter()
    iterate(*parser("iterate").parse_args_and_config(args=argv))
    seconds = time.perf_counter() - start
    rounds = json.loads((out / "rounds.json").read_text())
    start_eval = json.loads((out / "round_1" / "signal.json").read_text())["evaluation"]
    return {"rounds": rounds, "start_evaluation": start_eval, "seconds": seconds}


def run_online(cli, root: Path, prompts: Path) -> dict:
    from trl_sso.cli.commands import parser
    from trl_sso.generation.arguments import GenerationOptions
    from trl_sso.offline import default_model_path
    from trl_sso.scripts.online import train_online
    from trl_sso.scripts.stages import IterateArguments, save_next_policy, signal_stage

    out = root / "online"
    argv = (
        f"--output_dir {out / 'train'} --dataset_name {prompts} --sso_features {' '.join(FEATURES)} "
        f"--sso_principle_placement {PLACEMENT} --sso_num_features 1 --sso_concision_prob 0 "
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
    options = GenerationOptions(features=FEATURES)
    pipe = IterateArguments(eval_num_prompts=cli.eval_prompts, eval_max_completion_length=cli.eval_tokens)
    evaluation = signal_stage(str(policy), None, options, pipe, out / "signal.json")["evaluation"]
    return {"steps": steps, "final_evaluation": evaluation, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max_tokens", type=int, default=96)
    parser.add_argument("--eval_prompts", type=int, default=24)
    parser.add_argument("--eval_tokens", type=int, default=64)
    parser.add_argument("--output_dir", default="outputs/bench_online")
    cli = parser.parse_args()

    from trl_sso.signal.intervals import paired_change, with_interval

    root = Path(cli.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    prompts = root / "prompts.jsonl"
    write_prompts(prompts, cli.num_prompts)
    iterate_result = run_iterate(cli, root, prompts)
    online_result = run_online(cli, root, prompts)

    start = iterate_result["start_evaluation"]["follows_good_per_prompt"]
    final_iterate = iterate_result["rounds"]["final_evaluation"]
    final_online = online_result["final_evaluation"]
    comparison = {
        "iterate_vs_start": paired_change(final_iterate["follows_good_per_prompt"], start),
        "online_vs_start": paired_change(final_online["follows_good_per_prompt"], start),
        "online_vs_iterate": paired_change(
            final_online["follows_good_per_prompt"], final_iterate["follows_good_per_prompt"]
        ),
    }
    report = {"settings": vars(cli), "iterate": iterate_result, "online": online_result, "comparison": comparison}
    (root / "bench_online.json").write_text(json.dumps(report, indent=2))

    row = iterate_result["rounds"]["rounds"][0]
    print(f"\nonline SSO vs one iterate round: {cli.num_prompts} prompts (3 responses each), batch {cli.batch}")
    print(f"iterate: round accuracy {with_interval(row['accuracy'], row.get('accuracy_ci95'))} on "
          f"{row['accuracy_pairs']} pairs, {iterate_result['seconds']:.0f} s")  # fmt: skip
    accuracies = [step.get("online/accuracy") for step in online_result["steps"]]
    kept = [round(step["online/kept"], 2) for step in online_result["steps"]]
    shown = ["n/a" if a is None else round(a, 2) for a in accuracies]
    print(f"online: accuracy per step {shown}, kept per step {kept}, {online_result['seconds']:.0f} s")
    start_mean = iterate_result["start_evaluation"]["follows_good_mean"]
    finals = {
        name: with_interval(final["follows_good_mean"], final.get("follows_good_mean_ci95"))
        for name, final in (("iterate", final_iterate), ("online", final_online))
    }
    print(f"held-out follow rate: start {start_mean:.2f}, iterate {finals['iterate']}, online {finals['online']}")
    for name, (change, interval, significant) in comparison.items():
        verdict = "larger than" if significant else "within"
        print(f"  {name}: {with_interval(change, interval)}, {verdict} its uncertainty")


if __name__ == "__main__":
    main()
