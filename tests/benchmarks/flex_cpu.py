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
batch; the compiled ones do on about half of them, and give NaN, errors of a third of the logits or more, or C++ that
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
from torch.nn.attention.flex_attention import flex_attention  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402
from transformers.integrations import flex_attention as integration  # noqa: E402

from trl_sso import sharing  # noqa: E402


COMPILED = integration.compile_friendly_flex_attention
warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")


def eager(query, key, value, training=False, **kwargs):
    return flex_attention(query, key, value, **kwargs)


def tiny_model(model_type: str, attention: str):
    window = {"sliding_window": 6} if model_type == "mistral" else {}
    config = AutoConfig.for_model(
        model_type,
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **window,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


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
    generator = torch.Generator().manual_seed(1)

    def tokens(n):
        return torch.randint(1, 300, (n,), generator=generator).tolist()

    for sizes in ((6, 7), (8,), (7, 9, 10), (8, 8)):
        rows = []
        for size in sizes:
            question = tokens(3 + size)
            x, x_pos, x_neg = question + tokens(2), question + tokens(6), question + tokens(5)
            y_pos, y_neg, y_o = tokens(5), tokens(size - 3), tokens(4)
            rows.append(sharing.pack_tree([(x, [y_pos, y_neg]), (x_pos, [y_pos, y_neg]), (x_neg, [y_o, y_pos])]))
        batch = sharing.collate(rows, pad_token_id=0)
        yield f"{len(sizes)} tree rows x {batch['input_ids'].size(1)}", batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_type", default="llama", choices=("llama", "mistral"))
    args = parser.parse_args()
    reference = tiny_model(args.model_type, "sdpa")
    flex = tiny_model(args.model_type, "flex_attention")
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
        for kernel in (COMPILED, eager):
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
