"""Benchmark: the tokens one SSO record forwards in each layout, on the shape of the public SSO releases (questions of
about 150 tokens, responses of about 300), tokenized exactly as `SSOTrainer` tokenizes a record (the packaged
SmolLM2-135M-Instruct's chat template, the principle placed as `--placement` says, the packaged principles).

Layouts, each counting every token the policy's forward takes (the reference forward repeats them):

- TRL's DPO layout for SSO's three pairs: six rows `context + response` (`sso_share_prompt false`);
- the shared-prompt layout: one row per pair, its context once (`trl_sso.sharing.pack`, today's default);
- the tree: one row per record, the common beginning of x, x+ and x- once (`trl_sso.sharing.pack_tree`).

The floor of a layout is its tokens over those of one DPO pair on the same record (`[x + y+ ; x + y-]`): what an SSO
step costs against a DPO step if time followed tokens. Token counts are exact; they are not times (attention grows
with the square of a row's length, and the tree's rows are the longest): the step times are `bench_step.py`'s.

    python tests/benchmarks/bench_tokens.py                               # 32 records, after_question
    python tests/benchmarks/bench_tokens.py --placement system --records 8
"""

import argparse
import os
import statistics
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transformers import AutoTokenizer  # noqa: E402

from trl_sso.data import PAIRS, make_record, pair_texts  # noqa: E402
from trl_sso.offline import default_model_path  # noqa: E402
from trl_sso.principles import contrastive_system_prompts, known_features  # noqa: E402
from trl_sso.sharing import pack, pack_tree  # noqa: E402
from trl_sso.tokens import tokenize_pair  # noqa: E402


SSO_PAIRS = tuple(PAIRS)  # main, pos, neg


WORDS = (
    "how should a careful engineer explain why the cache misses grow when the working set outgrows the last level "
    "and what would you measure first before changing the code or the data layout of the service"
).split()


def words(n_tokens: int, seed: int) -> str:
    """About `n_tokens` tokens of English (SmolLM2's tokenizer gives about 1.2 tokens a word here)."""
    n = max(1, round(n_tokens / 1.2))
    return " ".join(WORDS[(seed * 5 + i * 7) % len(WORDS)] for i in range(n))


def record(seed: int, question_tokens: int, response_tokens: int) -> dict:
    features = known_features()
    names = sorted(features)
    chosen = [features[names[(seed + k) % len(names)]] for k in range(2)]
    positive, negative = contrastive_system_prompts(chosen)
    question = words(question_tokens, seed)
    return make_record(
        [{"role": "user", "content": question}],
        words(response_tokens, seed + 1),
        words(response_tokens, seed + 2),
        words(response_tokens, seed + 3),
        positive,
        negative,
    )


def counts(tokenizer, example: dict, placement: str) -> dict:
    texts = pair_texts(example, SSO_PAIRS, tokenizer, placement)
    groups = []
    for pair in SSO_PAIRS:
        prompt, chosen, rejected = tokenize_pair(tokenizer, *texts[pair])
        groups.append((prompt, [chosen, rejected]))
    context, (winner, loser) = groups[0]
    dpo = 2 * len(context) + len(winner) + len(loser)
    two_rows = sum(2 * len(p) + sum(len(c) for c in cs) for p, cs in groups)
    shared = sum(len(pack(p, cs)["input_ids"]) for p, cs in groups)
    tree = len(pack_tree(groups)["input_ids"])
    common = len(os.path.commonprefix([p for p, _ in groups]))
    return {
        "dpo": dpo,
        "two_rows": two_rows,
        "shared": shared,
        "tree": tree,
        "common": common,
        "context": len(context),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--question_tokens", type=int, default=150)
    parser.add_argument("--response_tokens", type=int, default=300)
    parser.add_argument("--placement", default="after_question")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    rows = [
        counts(tokenizer, record(seed, args.question_tokens, args.response_tokens), args.placement)
        for seed in range(args.records)
    ]
    total = {key: sum(row[key] for row in rows) for key in rows[0]}
    mean_x, mean_common = total["context"] / len(rows), statistics.mean(row["common"] for row in rows)
    print(
        f"{args.records} records, placement {args.placement}: x of {mean_x:.0f} tokens, x / x+ / x- sharing their "
        f"first {mean_common:.0f}; y+, y- and y_o of about {args.response_tokens} tokens"
    )
    print(f"{'layout':34} {'tokens / record':>16} {'x DPO pair (floor)':>19} {'x shared layout':>16}")
    for key, name in (
        ("dpo", "DPO, one pair (two rows)"),
        ("two_rows", "SSO, three pairs, two rows each"),
        ("shared", "SSO, shared-prompt layout"),
        ("tree", "SSO, tree (one row a record)"),
    ):
        print(
            f"{name:34} {total[key] / len(rows):16.1f} {total[key] / total['dpo']:19.3f} "
            f"{total[key] / total['shared']:16.3f}"
        )


if __name__ == "__main__":
    main()
