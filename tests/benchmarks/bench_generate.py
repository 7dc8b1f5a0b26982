"""Benchmark: generation throughput of the SSO generator against a naive loop and a bare batched `generate`.

All three sample the same prompts (x+, x- and x for each query, built by the generator) with the same model and
settings, and count the generated tokens up to the end-of-sequence token:

- generator: `SSOGenerator.run()` end to end (principles, batching, filters, batch files, the final merge);
- naive loop: `model.generate` on one prompt at a time;
- bare batched: `model.generate` on exactly the batches the generator formed, with nothing around it.

Targets: at least 3x the naive loop on 2 CPU cores at batch 8, and at least 85% of the bare batched throughput.

    python tests/benchmarks/bench_generate.py [--num_prompts 16] [--max_new_tokens 32] [--batch_size 8]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from trl_sso.generation import GenerateArguments, SSOGenerator  # noqa: E402
from trl_sso.generation.samplers import TransformersSampler  # noqa: E402
from trl_sso.offline import default_model_path  # noqa: E402


class Recording(TransformersSampler):
    """The generator's sampler, recording each batch of prompt texts it generates (for the bare baseline)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def sample(self, prompts, temperature, top_p, max_new_tokens, seed):
        from trl_sso.data import render

        texts = [render(self.tokenizer, m) for m in prompts]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.batch_size):
            self.batches.append(([texts[i] for i in order[start : start + self.batch_size]], temperature))
        return super().sample(prompts, temperature, top_p, max_new_tokens, seed)


def count_new_tokens(output, prompt_width, eos_ids):
    total = 0
    for row in output[:, prompt_width:].tolist():
        end = next((j for j, t in enumerate(row) if t in eos_ids), None)
        total += len(row) if end is None else end
    return total


def timed_generate(model, tokenizer, texts, temperature, top_p, max_new_tokens, eos_ids):
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=None,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    return count_new_tokens(output, inputs["input_ids"].shape[1], eos_ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    cli = parser.parse_args()

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    sampler = Recording(model, tokenizer, batch_size=cli.batch_size)
    eos_ids = sampler.eos_ids
    args = GenerateArguments(
        output_dir=tempfile.mkdtemp(prefix="trl-sso-bench-gen-"),
        num_prompts=cli.num_prompts,
        max_completion_length=cli.max_new_tokens,
        batch_size=cli.batch_size,
        seed=0,
    )

    torch.manual_seed(0)
    start = time.perf_counter()
    _, summary = SSOGenerator(args, sampler=sampler, tokenizer=tokenizer).run()
    generator_time = time.perf_counter() - start
    generator_tokens = summary["generated_tokens"]

    bare_tokens, start = 0, time.perf_counter()
    for texts, temperature in sampler.batches:
        bare_tokens += timed_generate(model, tokenizer, texts, temperature, args.top_p, cli.max_new_tokens, eos_ids)
    bare_time = time.perf_counter() - start

    naive_tokens, start = 0, time.perf_counter()
    for texts, temperature in sampler.batches:
        for text in texts:
            naive_tokens += timed_generate(
                model, tokenizer, [text], temperature, args.top_p, cli.max_new_tokens, eos_ids
            )
    naive_time = time.perf_counter() - start

    rates = {
        "generator": generator_tokens / generator_time,
        "bare batched generate": bare_tokens / bare_time,
        "naive one-at-a-time": naive_tokens / naive_time,
    }
    print(
        f"SmolLM2-135M-Instruct, fp32, {torch.get_num_threads()} threads; {cli.num_prompts} queries x 3 prompts, "
        f"max_new_tokens {cli.max_new_tokens}, batch {cli.batch_size}"
    )
    for name, tokens, seconds in (
        ("generator", generator_tokens, generator_time),
        ("bare batched generate", bare_tokens, bare_time),
        ("naive one-at-a-time", naive_tokens, naive_time),
    ):
        print(f"{name:24} {tokens:6d} tokens {seconds:7.1f} s {tokens / seconds:7.1f} tokens/s")
    print(f"generator / naive: {rates['generator'] / rates['naive one-at-a-time']:.2f}x (target >= 3)")
    print(f"generator / bare batched: {rates['generator'] / rates['bare batched generate']:.2f} (target >= 0.85)")


if __name__ == "__main__":
    main()
