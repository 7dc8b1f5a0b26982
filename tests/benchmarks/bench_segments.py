"""Benchmark: one attention layer on shared and tree rows, SDPA with the dense mask against SDPA by segment
(`trl_sso.segment_attention`), forward and backward, at growing row lengths: where computing by segment starts to
pay (`segment_attention.MIN_LENGTH`).

The layer has SmolLM2-135M's attention shape (9 query heads, 3 key/value heads, head dim 64). The rows are an SSO
record's: a shared row (a prompt of a quarter of the row, two responses) and a tree row (a root of a tenth, three
contexts of a twentieth, six responses). Each figure is the fastest of `--repeats` runs.

With `--flex` (the default on a GPU; torch has no FlexAttention backward on a CPU), also FlexAttention with the same
mask as a `BlockMask` (`trl_sso.sharing.flex_block_mask`, compiled as FlexAttention is meant to run), which skips the
blocks with nothing to attend to: the path the prefix-sharing paper for DPO (arXiv 2410.20305) timed on GPUs.

    python tests/benchmarks/bench_segments.py
    python tests/benchmarks/bench_segments.py --lengths 256,512,1024,2048 --device cuda
"""

import argparse
import os
import sys
import time
from pathlib import Path


os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from torch.nn.attention.flex_attention import flex_attention  # noqa: E402

from trl_sso import segment_attention, sharing  # noqa: E402


class Layer(torch.nn.Module):
    """What SDPA reads of an attention module: its key/value grouping and causality."""

    num_key_value_groups = 3
    is_causal = True


def rows_of(kind: str, length: int) -> list[dict]:
    """One shared or tree row of about `length` tokens (token ids do not matter here)."""
    if kind == "shared":
        prompt, response = length // 4, (length - length // 4) // 2
        return [sharing.pack(list(range(prompt)), [[1] * response, [2] * response])]
    root, context, response = length // 10, length // 20, (length - length // 10 - 3 * (length // 20)) // 6
    groups = [(list(range(root)) + [7 + g] * context, [[1] * response, [2] * response]) for g in range(3)]
    return [sharing.pack_tree(groups)]


def timed(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def time_row(kind: str, length: int, device: str, repeats: int, flex) -> str:
    """The line of one row: dense, by segment and (with `flex`, the compiled FlexAttention) block-sparse timings."""
    layer = Layer()
    batch = {k: v.to(device) for k, v in sharing.collate(rows_of(kind, length), 0).items()}
    mask = sharing.allowed_attention(batch["exit_ids"], batch["position_ids"])
    plan = segment_attention.segment_plan(batch["segment_ids"], batch["exit_ids"], sharing.PADDING)
    size = batch["exit_ids"].size(1)
    generator = torch.Generator(device=device).manual_seed(0)
    query = torch.randn(1, 9, size, 64, device=device, generator=generator, requires_grad=True)
    key, value = (
        torch.randn(1, 3, size, 64, device=device, generator=generator, requires_grad=True) for _ in range(2)
    )
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(segments):
        output, _ = segment_attention.segment_sdpa(layer, query, key, value, mask, sso_segments=segments)
        output.sum().backward()
        sync()

    dense, by_segment = timed(lambda: step(None), repeats), timed(lambda: step(plan), repeats)
    line = f"{kind:6} {size:6d} {dense * 1000:9.2f} {by_segment * 1000:14.2f} {by_segment / dense:16.2f}"
    if flex is not None:
        block_mask = sharing.flex_block_mask(batch["exit_ids"], batch["position_ids"])

        def flex_step():
            flex(query, key, value, block_mask=block_mask, enable_gqa=True).sum().backward()
            sync()

        flex_step()  # compiles
        blocks = timed(flex_step, repeats)
        line += f" {blocks * 1000:9.2f} {blocks / dense:13.2f}"
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,256,384,512,768,1024,2048")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--flex",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=None,
        help="also time FlexAttention with the block mask (default: on a GPU; a CPU has no FlexAttention backward)",
    )
    args = parser.parse_args()
    if args.flex and args.device == "cpu":
        parser.error(
            "--flex times FlexAttention's forward and backward, and torch has no FlexAttention backward on a CPU."
        )
    flex = torch.compile(flex_attention) if (args.flex if args.flex is not None else args.device == "cuda") else None
    print(f"device {args.device}; {torch.get_num_threads()} threads; forward + backward of one attention layer")
    header = f"{'row':6} {'length':>6} {'dense ms':>9} {'by segment ms':>14} {'segment / dense':>16}"
    print(header + (f" {'flex ms':>9} {'flex / dense':>13}" if flex is not None else ""))
    for kind in ("shared", "tree"):
        for length in (int(n) for n in args.lengths.split(",")):
            print(time_row(kind, length, args.device, args.repeats, flex))


if __name__ == "__main__":
    main()
