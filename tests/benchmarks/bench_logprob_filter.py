"""Measurement: what the log-prob filter keeps when it tokenizes responses as the trainer does, against the earlier
tokenization it replaced.

The filter (`trl_sso.generation.filters.logprob_keep`) scores y+ and y- under x+, x and x- with the policy. It used
to render the prompt and tokenize each response on its own, without the assistant turn's end-of-turn tokens; it now
tokenizes a response as the trainer does (`trl_sso.tokens`: an assistant turn after the prompt). This script takes a
generated SSO dataset (by default the quickstart's round 1), scores each record both ways with the policy that
generated it, applies the filter per generation batch, and prints how many records each keeps and how many verdicts
differ.

    trl-sso iterate --config recipes/quickstart_cpu.yaml      # writes outputs/quickstart/round_1/data
    python tests/benchmarks/bench_logprob_filter.py [--data outputs/quickstart/round_1/data] [--batch_size 8]
"""

import argparse
import os
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def earlier_rows(tokenizer, prompts, responses):
    """The tokenization the filter used before: the rendered prompt, and each response tokenized on its own."""
    from trl_sso.data import render

    return [
        (
            tokenizer(render(tokenizer, prompt), add_special_tokens=False)["input_ids"],
            [tokenizer(r, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id] for r in rs],
        )
        for prompt, rs in zip(prompts, responses, strict=True)
    ]


def scores(model, tokenizer, records, earlier: bool, batch_size: int) -> list[dict]:
    """The filter's scores of each record: y+ and y- under x+, x and x- (`{p,o,n}_{chosen,rejected}`)."""
    from trl_sso.data import build_steered_prompt, record_placement
    from trl_sso.generation.samplers import TransformersSampler
    from trl_sso.sharing import completion_logps
    from trl_sso.signal.responses import response_text

    sampler = TransformersSampler(model, tokenizer, batch_size)
    plain = [record["prompt"] for record in records]
    pos = [build_steered_prompt(r["prompt"], r["positive_system"], tokenizer, record_placement(r)) for r in records]
    neg = [build_steered_prompt(r["prompt"], r["negative_system"], tokenizer, record_placement(r)) for r in records]
    pairs = [[response_text(r["chosen"]), response_text(r["rejected"])] for r in records]
    prompts, responses = pos + plain + neg, pairs * 3
    if earlier:
        rows = earlier_rows(tokenizer, prompts, responses)
        values = completion_logps(model, rows, tokenizer.pad_token_id, batch_size)
        values = [[total / max(count, 1) for total, count in row] for row in values]
    else:
        values = sampler.mean_logps(prompts, responses)
    n = len(records)
    keys = (("p_chosen", "p_rejected"), ("o_chosen", "o_rejected"), ("n_chosen", "n_rejected"))
    return [
        {key: value for j, names in enumerate(keys) for key, value in zip(names, values[j * n + i])} for i in range(n)
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="outputs/quickstart/round_1/data")
    parser.add_argument("--model_name_or_path", help="The policy that generated the data (default: as recorded).")
    parser.add_argument("--batch_size", type=int, default=8, help="The generation batch the filter's means span.")
    cli = parser.parse_args()

    from trl_sso.data import load_sso_dataset
    from trl_sso.generation.filters import logprob_keep
    from trl_sso.signal.onpolicy import load_policy

    records = sorted(load_sso_dataset(cli.data).to_list(), key=lambda r: r.get("prompt_index", 0))
    model, tokenizer = load_policy(cli.model_name_or_path or records[0]["generator_model"])
    kept = {}
    for earlier in (True, False):
        values = scores(model, tokenizer, records, earlier, cli.batch_size)
        kept[earlier] = [
            keep
            for start in range(0, len(values), cli.batch_size)
            for keep in logprob_keep(values[start : start + cli.batch_size])
        ]
    differ = sum(a != b for a, b in zip(kept[True], kept[False]))
    print(
        f"{len(records)} records of {cli.data}: the earlier tokenization keeps {sum(kept[True])}, the trainer's "
        f"keeps {sum(kept[False])}; {differ} verdicts differ."
    )


if __name__ == "__main__":
    main()
