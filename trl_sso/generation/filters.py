"""Filters on generated triples, each with a reason name under which dropped records are counted.

A record holds `chosen` (y+), `rejected` (y-) and `original` (y_o) as `Completion`s. Checks run in the order below and
the first that fails names the reason.
"""

import re
from collections.abc import Sequence

from ..signal.responses import normalize
from .samplers import Completion


_REVEAL = re.compile(r"\b(guidelines?|principles?|system prompt|i was (?:told|instructed))\b", re.IGNORECASE)

REASONS = (
    "empty",
    "truncated",
    "chosen_equals_rejected",
    "original_equals_chosen",
    "original_equals_rejected",
    "reveals_guidelines",
    "logprob",
)


def drop_reason(
    chosen: Completion,
    rejected: Completion,
    original: Completion,
    *,
    min_chars: int = 2,
    drop_truncated: bool = False,
    drop_revealing: bool = True,
) -> str | None:
    """The first reason to drop the triple, or `None` to keep it."""
    responses = (chosen, rejected, original)
    if any(len(normalize(r.text)) < min_chars for r in responses):
        return "empty"
    if drop_truncated and not all(r.finished for r in responses):
        return "truncated"
    c, r, o = (normalize(x.text) for x in responses)
    if c == r:
        return "chosen_equals_rejected"
    if o == c:
        return "original_equals_chosen"
    if o == r:
        return "original_equals_rejected"
    if drop_revealing and (_REVEAL.search(chosen.text) or _REVEAL.search(rejected.text)):
        return "reveals_guidelines"
    return None


def logprob_keep(scores: Sequence[dict[str, float]]) -> list[bool]:
    """The stricter filter of sso-method.md on a batch of records.

    Each score holds the token-mean log-probabilities `{p,o,n}_{chosen,rejected}` of chosen / rejected under the
    positive, plain and negative prompt. A record is kept when each response is most likely under its own principle
    (`p_chosen > o_chosen > n_chosen` and `n_rejected > o_rejected > p_rejected`) and it is near on-policy
    (`o_chosen` and `o_rejected` at or above their batch means).
    """
    if not scores:
        return []
    mean_chosen = sum(s["o_chosen"] for s in scores) / len(scores)
    mean_rejected = sum(s["o_rejected"] for s in scores) / len(scores)
    return [
        s["p_chosen"] > s["o_chosen"] > s["n_chosen"]
        and s["n_rejected"] > s["o_rejected"] > s["p_rejected"]
        and s["o_chosen"] >= mean_chosen
        and s["o_rejected"] >= mean_rejected
        for s in scores
    ]
