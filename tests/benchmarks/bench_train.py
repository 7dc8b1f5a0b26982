"""Benchmark, the user's way: `trainer.train()` for a few steps on the packaged SmolLM2-135M-Instruct, SSOTrainer in
its layouts against TRL's DPOTrainer on the plain pairs of the same records, as someone trying trl-sso would time it.

`bench_step.py` times one fixed batch through `training_step`; here each trainer runs its own training loop (data
loader, changing batches, logging, optimizer), from a model path with the default `SSOConfig` apart from the layout.
Each trainer runs in a process of its own, the trainers one after the other, `--rounds` times in turn. Per trainer:

- the time of each optimizer step after the first (the first creates the optimizer state): the fastest and the median;
- the tokens the policy forwards a step (padded, counted on the batches the data loader hands over), and that per
  DPO step;
- the peak memory of the steps after the first (CUDA: `max_memory_allocated`; CPU: the growth of the process's peak
  resident set).

    python tests/benchmarks/bench_train.py                  # the public releases' shape, after the question
    python tests/benchmarks/bench_train.py --steps 6 --rounds 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (its set-up: offline, quiet, the package on the path)
import torch  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from trl_sso import SSOConfig, SSOTrainer  # noqa: E402


LAYOUTS = {  # SSOConfig overrides
    "SSO, tree": {},
    "SSO, one shared row a pair": {"sso_share_across_pairs": False},
    "SSO, two rows a pair": {"sso_share_prompt": False},
}
DPO = "DPOTrainer, plain pairs"


class StepClock(TrainerCallback):
    """The wall time of each optimizer step, and the peak memory of the steps after the first."""

    def __init__(self, device: str):
        self.device, self.seconds, self.peak_mib = device, [], None

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        if len(self.seconds) == 1:  # the first step is done: measure the peak from here
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            else:
                self.resident = bench_step.status_mib("VmRSS")
                Path("/proc/self/clear_refs").write_text("5")  # peak resident set := current resident set
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.seconds.append(time.perf_counter() - self.start)

    def on_train_end(self, args, state, control, **kwargs):
        if self.device == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mib = bench_step.status_mib("VmHWM") - self.resident


class TokenCount:
    """A collator that counts the tokens of the policy forward of each batch it builds: one tree row per example,
    or each pair's rows."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, []

    def __call__(self, examples):
        batch = self.collator(examples)
        keys = ["tree_input_ids"] if "tree_input_ids" in batch else [k for k in batch if k.endswith("input_ids")]
        self.tokens.append(sum(batch[k].numel() for k in keys))
        return batch


def run_one(name: str, args, work: str) -> dict:
    from trl_sso.offline import default_model_path

    model_path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    records = args.batch * args.steps
    dataset = bench_step.make_dataset(
        records, args.prompt_words, args.principle_words, args.response_words, args.placement
    )
    common = dict(
        bench_step.common_args(tempfile.mkdtemp(dir=work), args), max_steps=args.steps, logging_steps=1, seed=0
    )
    if name == DPO:
        trainer = DPOTrainer(model_path, args=DPOConfig(**common), train_dataset=dataset, processing_class=tokenizer)
    else:
        config = SSOConfig(**common, **LAYOUTS[name])  # the placement comes with each record
        trainer = SSOTrainer(model_path, args=config, train_dataset=dataset, processing_class=tokenizer)
    clock, counter = StepClock(args.device), TokenCount(trainer.data_collator)
    trainer.data_collator = counter
    trainer.add_callback(clock)
    trainer.train()
    return {"seconds": clock.seconds, "tokens": counter.tokens[: len(clock.seconds)], "peak_mib": clock.peak_mib}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of each trainer (the first not timed)")
    parser.add_argument("--rounds", type=int, default=1, help="processes per trainer, run in turn")
    parser.add_argument("--prompt_words", type=int, default=150)
    parser.add_argument("--principle_words", type=int, default=40)
    parser.add_argument("--response_words", type=int, default=300)
    parser.add_argument(
        "--placement", default="after_question", choices=("system", "before_question", "after_question")
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--gradient_checkpointing",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="TRL's default is on",
    )
    parser.add_argument("--run_one", help=argparse.SUPPRESS)  # internal: one trainer in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = parse_args()
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args, args.work)))
        return
    if args.steps < 2:
        raise SystemExit("--steps must be 2 or more: the first step is not timed.")
    work = tempfile.mkdtemp(prefix="trl-sso-bench-train-")
    names = [*LAYOUTS, DPO]
    runs = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            command = [sys.executable, __file__, *sys.argv[1:], "--run_one", name, "--work", work]
            result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if result.returncode != 0:
                raise SystemExit(f"The run of {name!r} failed:\n{result.stderr[-3000:]}")
            runs[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(
        f"packaged SmolLM2-135M-Instruct; batch {args.batch}; {args.steps} steps a run, the first not timed; "
        f"{args.rounds} round(s); device {args.device}; {torch.get_num_threads()} threads; gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; {bench_step.allocator()}; principle {args.placement}"
    )
    timed = {name: [s for run in runs[name] for s in run["seconds"][1:]] for name in names}
    tokens = {name: statistics.mean(t for run in runs[name] for t in run["tokens"]) for name in names}
    header = (
        f"{'trainer':28} {'fastest ms':>11} {'median ms':>10} {'x DPO':>6} {'tokens/step':>12} {'x DPO':>6} "
        f"{'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    dpo_time = statistics.median(timed[DPO])
    for name in names:
        median = statistics.median(timed[name])
        peaks = ", ".join(f"{run['peak_mib']:.0f}" for run in runs[name])
        print(
            f"{name:28} {min(timed[name]) * 1000:11.0f} {median * 1000:10.0f} {median / dpo_time:6.2f} "
            f"{tokens[name]:12.0f} {tokens[name] / tokens[DPO]:6.2f} {peaks:>9}"
        )
    print("each timed step (ms), run by run:")
    for name in names:
        steps = (" ".join(f"{seconds * 1000:.0f}" for seconds in run["seconds"][1:]) for run in runs[name])
        print(f"  {name:28} " + " | ".join(steps))


if __name__ == "__main__":
    main()
