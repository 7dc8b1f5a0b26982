"""Measurement: is torch's compiled FlexAttention fit for use on a CPU? It is what transformers runs for
`attn_implementation="flex_attention"`, and what a FlexAttention model would run SSO's block mask with on a CPU.

The same tiny random model (Llama, or `--model_type`) scores the same batches three ways, one after the other in one
process as a trainer would: SDPA with transformers' masks (the reference), FlexAttention compiled as transformers
compiles it, and FlexAttention run eagerly (torch's unfused implementation of the same semantics). The batches change
shape from call to call: batch size, length, left padding. First with transformers' own masks (no SSO involved), then
with SSO's tree rows and their block mask (`trl_sso.sharing.flex_block_mask`). Each line prints the largest error of a
scored value against SDPA, relative to the largest value, or the error that compiling raised.

    python tests/benchmarks/flex_cpu.py                       # Llama
    python tests/benchmarks/flex_cpu.py --model_type mistral  # a sliding window in the mask

With torch 2.13 (tests/benchmarks/results/flex_cpu.txt) the eager runs agree with SDPA to float32 rounding on every
batch; the compiled ones on at most half of them, and give NaN, errors of a third of the logits or more, or C++ that
does not build on the others, with transformers' own masks as with the block mask. This is why tests/test_sharing.py
checks the block mask through the eager function, and why SSOTrainer refuses FlexAttention on a CPU.
"""

import argparse
import os
import sys
import warnings
from pathlib import Path


os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from test_sharing import eager_flex_attention, sso_record, tiny_family_model  # noqa: E402  (the tests' models)
from transformers.integrations import flex_attention as integration  # noqa: E402

from trl_sso import sharing  # noqa: E402


COMPILED = integration.compile_friendly_flex_attention
warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")


def plain_batches():
    """(ids, attention_mask, kept positions) of batches that change shape, left-padded in their first row."""
    generator = torch.Generator().manual_seed(0)
    for rows, length, padding in ((2, 40, 5), (1, 56, 0), (3, 59, 7), (2, 44, 9)):
        ids = torch.randint(1, 300, (rows, length), generator=generator)
        mask = torch.ones(rows, length, dtype=torch.long)
        mask[0, :padding] = 0
        yield f"{rows} x {length}", ids, {"attention_mask": mask}, mask.bool()


def tree_batches():
    """Tree rows of SSO records (x, x+ and x- sharing a question) as the trainer forwards them, changing shape."""
    for seeds in ((0, 1), (2,), (1, 3, 4), (2, 2)):
        batch = sharing.collate([sharing.pack_tree(sso_record(seed)) for seed in seeds], pad_token_id=0)
        yield f"{len(seeds)} tree rows x {batch['input_ids'].size(1)}", batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_type", default="llama", choices=("llama", "mistral"))
    args = parser.parse_args()
    reference = tiny_family_model(args.model_type, "sdpa")
    flex = tiny_family_model(args.model_type, "flex_attention")
    print(f"torch {torch.__version__}, {args.model_type}; error = max |logit - SDPA's| / max |SDPA's logit|")
    print(f"{'batch':<26} {'compiled':>22} {'eager':>10}")

    def error(forward, expected, kept):
        try:
            with torch.no_grad():
                got = forward()
        except Exception as exc:  # noqa: BLE001 - the compiler's failure is the figure
            text = str(exc)
            return "build fails" if "error:" in text else type(exc).__name__
        difference = (got - expected)[kept].abs().max() / expected[kept].abs().max()
        return "nan" if difference.isnan() else f"{difference.item():.1e}"

    def line(name, run, kept):
        with torch.no_grad():
            expected = run(reference)
        figures = []
        for kernel in (COMPILED, eager_flex_attention):
            integration.compile_friendly_flex_attention = kernel
            figures.append(error(lambda: run(flex), expected, kept))
        integration.compile_friendly_flex_attention = COMPILED
        print(f"{name:<26} {figures[0]:>22} {figures[1]:>10}")

    print("transformers' own masks")
    for name, ids, extra, kept in plain_batches():
        line(name, lambda model, ids=ids, extra=extra: model(input_ids=ids, **extra).logits, kept)
    print("SSO tree rows, block mask")
    for name, batch in tree_batches():
        kept = batch["attention_mask"].bool()

        def run(model, batch=batch):
            config, dtype = sharing.mask_settings(model)
            attention = sharing.attention_inputs(config, dtype, batch)
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **attention).logits

        line(name, run, kept)


if __name__ == "__main__":
    main()
