"""On-policyness: `A(x, y)`, the token-mean log-probability of a response under the **plain** prompt and a policy
(the quantity behind SSO's weight `W`), for y+, y- and y_o. The main pair is tokenized exactly as `SSOTrainer`
tokenizes it, so the values equal the trainer's `A` for the same records and model.

y_o is the policy's own answer, so `A(x, y+) - A(x, y_o)` and `A(x, y-) - A(x, y_o)` say how far the pair has drifted
from what the policy would say anyway; `exp(A)` is the paper's "average response probability".
"""

import math
import time
from collections.abc import Mapping

from ..data import CHOSEN, ORIGINAL, PROMPT, REJECTED, RESPONSE_COLUMNS
from ..models import load_chat_model
from .intervals import all_equal_note, bootstrap_mean


def load_policy(name: str):
    """`(model, tokenizer)` of the policy `name` for scoring and evaluation (`trl_sso.models.load_chat_model`)."""
    return load_chat_model(name, chat=False)


def mean_logps(
    model, tokenizer, records: list[Mapping], batch_size: int = 8, score_rows=None
) -> tuple[dict[str, list[float]], float]:
    """`A(x, y)` of y+, y- and y_o for each record, as `{column: [value per record]}`, and the records scored per
    second. The plain prompt is forwarded once for its three responses (`trl_sso.sharing`), `batch_size` prompts at a
    time; or, with `score_rows` (a vLLM sampler's `completion_logps`), scored by vLLM and `model` is not used."""
    from ..sharing import completion_logps
    from ..tokens import template_kwargs, tokenize_pair

    rows, owners = [], []  # (prompt ids, [completion ids]); owners: the (record, columns) of each row
    for index, record in enumerate(records):
        kwargs = template_kwargs(record)
        prompt, chosen, rejected = tokenize_pair(tokenizer, record[PROMPT], record[CHOSEN], record[REJECTED], kwargs)
        original_prompt, original, _ = tokenize_pair(
            tokenizer, record[PROMPT], record[ORIGINAL], record[ORIGINAL], kwargs
        )
        if original_prompt == prompt:
            rows.append((prompt, [chosen, rejected, original]))
            owners.append((index, (CHOSEN, REJECTED, ORIGINAL)))
        else:  # the template tokenizes the prompt differently before y_o: score it after its own prompt
            rows += [(prompt, [chosen, rejected]), (original_prompt, [original])]
            owners += [(index, (CHOSEN, REJECTED)), (index, (ORIGINAL,))]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = time.perf_counter()
    if score_rows is not None:
        scores = score_rows(rows)
    else:
        scores = completion_logps(model, rows, pad, batch_size, desc="Scoring A(x, y)")
    values = {column: [0.0] * len(records) for column in RESPONSE_COLUMNS}
    for (index, columns), row in zip(owners, scores):
        for column, (total, count) in zip(columns, row):
            values[column][index] = total / max(count, 1)
    return values, len(records) / max(time.perf_counter() - start, 1e-9)


def gaps_to_original(values: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Per record, the on-policyness gaps `A(x, y+) - A(x, y_o)` and `A(x, y-) - A(x, y_o)` (from `mean_logps`): how
    far each response of the pair drifted from what the policy says without a principle."""
    return {column: [a - o for a, o in zip(values[column], values[ORIGINAL])] for column in (CHOSEN, REJECTED)}


def onpolicy_report(values: Mapping[str, list[float]]) -> dict:
    """Means of `A(x, y)` and of `exp(A)` for y+, y-, y_o, and the mean gaps of y+ and y- to y_o with their bootstrap
    intervals (per-record differences: the three responses share their prompt; where every difference is equal, no
    interval and a note)."""

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    gaps = gaps_to_original(values)
    report = {
        "mean_logp": {column: mean(values[column]) for column in RESPONSE_COLUMNS},
        "mean_prob": {column: mean([math.exp(a) for a in values[column]]) for column in RESPONSE_COLUMNS},
        "gap_to_original": {column: mean(gaps[column]) for column in gaps},
        "gap_to_original_ci95": {column: bootstrap_mean(gaps[column]) for column in gaps},
    }
    notes = {column: all_equal_note(gaps[column]) for column in gaps if all_equal_note(gaps[column])}
    if notes:
        report["gap_to_original_notes"] = notes
    return report
