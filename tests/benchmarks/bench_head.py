"""Benchmark: the fused LM head on a CPU, TRL's tiles against trl-sso's CPU tiles (`trl_sso.sharing.CPU_HEAD_TOKENS`).

TRL's `ChunkedLogProbFunction` projects the hidden states on the vocabulary tile by tile without materialising the
logits. Its tiles hold 4,096 tokens; without Triton (a CPU) each tile is folded by torch operations over the whole
tile, so a call's temporaries grow with its number of tokens. A tree row (`trl_sso.sharing.pack_tree`) scores all six
completions of a record in one call, three times the tokens of one pair of the shared-prompt layout. The figures:
forward and backward over `--tokens` scored tokens at once and over three calls of a third each, for several tile
sizes, each the fastest of `--repeats` runs, with the process's minor page faults over that run.

    python tests/benchmarks/bench_head.py                      # SmolLM2-135M's head: hidden 576, vocabulary 49,152
    python tests/benchmarks/bench_head.py --tokens 900 --tiles 4096,128
"""

import argparse
import resource
import time

import torch
from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE, ChunkedLogProbFunction

from trl_sso.sharing import CPU_HEAD_TOKENS, with_token_tiles


def run(function, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, repeats: int) -> tuple:
    """(seconds, page faults) of the fastest forward + backward of `function` over `hidden`."""
    best = (float("inf"), 0)
    for _ in range(repeats):
        faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        log_probs = function.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0, ("log_probs",))[0]
        log_probs.sum().backward()
        seconds = time.perf_counter() - start
        best = min(best, (seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
        weight.grad = hidden.grad = None
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--tokens", type=int, default=1800, help="scored tokens of one tree row (six completions)")
    parser.add_argument("--tiles", default=f"{TOKEN_CHUNK_SIZE},1024,256,{CPU_HEAD_TOKENS},64")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    weight = (torch.randn(args.vocab, args.hidden) * 0.02).requires_grad_()
    hidden = torch.randn(args.tokens, args.hidden, requires_grad=True)
    targets = torch.randint(0, args.vocab, (args.tokens,))
    third = args.tokens // 3
    print(
        f"fused LM head, hidden {args.hidden}, vocabulary {args.vocab}, CPU, {torch.get_num_threads()} threads; "
        f"forward + backward, fastest of {args.repeats}"
    )
    print(f"{'tokens a tile':>14} {f'{args.tokens} at once':>22} {f'3 x {third}':>22}")
    for tiles in (int(t) for t in args.tiles.split(",")):
        function = (
            ChunkedLogProbFunction if tiles == TOKEN_CHUNK_SIZE else with_token_tiles(ChunkedLogProbFunction, tiles)
        )
        label = f"{tiles}" + (
            " (TRL)" if tiles == TOKEN_CHUNK_SIZE else " (trl-sso)" if tiles == CPU_HEAD_TOKENS else ""
        )
        once = run(function, hidden, weight, targets, args.repeats)
        parts = [
            run(
                function,
                hidden[i * third : (i + 1) * third],
                weight,
                targets[i * third : (i + 1) * third],
                args.repeats,
            )
            for i in range(3)
        ]
        split = (sum(p[0] for p in parts), sum(p[1] for p in parts))
        print(f"{label:>14} {once[0]:9.2f} s {once[1]:8d} pf {split[0]:9.2f} s {split[1]:8d} pf")


if __name__ == "__main__":
    main()
