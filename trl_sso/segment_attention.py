"""Attention by segment: the ancestor mask of a shared or tree row (`trl_sso.sharing`) computed block by block.

SDPA takes the mask of a shared row as a dense `(length, length)` mask and computes every query against every key,
allowed or not. A tree row holds six responses side by side, so most of its square is masked: on a record of the
public releases' shape (questions of ~150 tokens, responses of ~300) a tree row of 2,100 tokens allows about a
quarter of its 4.4M query-key pairs, and SDPA's CPU kernel spent twice the time of today's shorter rows on it.

Here each segment's queries meet only the keys they may see: those of its ancestors (the shared root, its context)
and the earlier tokens of its own segment. A row becomes one SDPA call per segment, each on a gathered block of keys
with its slice of the same boolean mask (so a sliding window still bites), and the outputs are put back in row order.
The arithmetic per allowed pair is SDPA's own; the sums run over fewer masked terms, which changes only their rounding.

It is an attention implementation of transformers' `AttentionInterface` (`IMPLEMENTATION`): a model switched to it
(`use_segment_attention`) runs SDPA itself, unchanged, on every forward that does not pass the rows' `segments`
(`segment_plan`) as the keyword `sso_segments`, e.g. `generate`. Rows shorter than `MIN_LENGTH` keep the dense
mask: there the calls per segment cost more than the masked square they save (`pays`; on a CPU, where it was timed).
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


IMPLEMENTATION = "sso_segment_sdpa"
# rows from this length on are computed by segment: on a CPU, one attention layer's forward and backward took 0.79 to
# 0.84 of the dense time at 384 tokens, 0.93 to 1.31 at 256 (tests/benchmarks/results/bench_segments_cpu.txt)
MIN_LENGTH = 384


def segment_plan(segment_ids: torch.Tensor, exit_ids: torch.Tensor, padding: int) -> tuple:
    """For each row of `(rows, length)` `segment_ids` and `exit_ids` (`trl_sso.sharing.collate`), its segments in row
    order as `(begin, end, keys)`: the span `[begin, end)` of the segment's queries, and the indices of the keys they
    may see, its ancestors' tokens (every `k < begin` whose subtree, ending at `exit_ids[k]`, holds `begin`) then its
    own. Padding (segment id `padding`) has no entry. The indices live on `exit_ids`' device; the plan is read once
    per batch on the host."""
    rows = []
    index = torch.arange(segment_ids.size(1))
    for segments, exits in zip(segment_ids.tolist(), exit_ids.cpu(), strict=True):
        plan, begin = [], 0
        for end in range(1, len(segments) + 1):
            if end < len(segments) and segments[end] == segments[begin]:
                continue
            if segments[begin] != padding:
                ancestors = index[:begin][exits[:begin] > begin]
                keys = torch.cat([ancestors, index[begin:end]]).to(exit_ids.device)
                plan.append((begin, end, keys))
            begin = end
        rows.append(tuple(plan))
    return tuple(rows)


def segment_sdpa(module, query, key, value, attention_mask, sso_segments=None, **kwargs):
    """transformers' SDPA attention, by segment where `sso_segments` (`segment_plan`) is given: `query` `(rows, heads,
    length, dim)` against `key`/`value` and the boolean `attention_mask` `(rows, 1, length, length)`; returns the
    output as `(rows, length, heads, dim)`, as SDPA's, and no weights. Padding positions get zeros (no real token
    attends to them)."""
    if sso_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    length = query.size(2)
    outputs = []
    for row, plan in enumerate(sso_segments):
        parts = []
        for begin, end, keys in plan:
            part, _ = sdpa_attention_forward(
                module,
                query[row : row + 1, :, begin:end],
                key[row : row + 1].index_select(2, keys),
                value[row : row + 1].index_select(2, keys),
                attention_mask[row : row + 1, :, begin:end].index_select(3, keys),
                **kwargs,
            )
            parts.append(part)
        done = plan[-1][1] if plan else 0
        if done < length:
            parts.append(query.new_zeros(1, length - done, query.size(1), query.size(3)))
        outputs.append(torch.cat(parts, dim=1))
    return torch.cat(outputs, dim=0), None


AttentionInterface.register(IMPLEMENTATION, segment_sdpa)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)  # everything but the shared rows: SDPA's own masks


def use_segment_attention(model) -> bool:
    """Switch `model` (a model, or a PEFT model around one) from SDPA to `IMPLEMENTATION`; any other implementation
    stays. Returns whether the model now computes by segment. The switch is not saved: transformers leaves the
    implementation out of a saved config."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation == "sdpa":
        base.set_attn_implementation(IMPLEMENTATION)
    return base.config._attn_implementation == IMPLEMENTATION


def pays(length: int, device: torch.device) -> bool:
    """Whether rows of `length` tokens on `device` are computed by segment: on a CPU, from `MIN_LENGTH` on. Elsewhere
    not yet: a GPU runs the dense masked square in parallel, and the calls per segment have not been timed there
    (tests/gpu/checks.py times both when a GPU is lent)."""
    return device.type == "cpu" and length >= MIN_LENGTH
