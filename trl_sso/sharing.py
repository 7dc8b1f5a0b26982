"""The shared-prompt layout: one row holds a prompt once and several completions of it; or, as a tree, several
prompts that begin alike (x, x+ and x- of an SSO record) with their common beginning once, and their completions.

Preference trainers lay a pair out as two rows, `[prompt + winner ; prompt + loser]`, so the prompt is forwarded twice.
SSO's steering prompts carry a whole principle, which makes that repetition a large share of its tokens. In the shared
layout a prompt `p` of `n` tokens and its completions `c_1 .. c_K` become one row:

    p_0 .. p_{n-2} | p_{n-1} c_1 | p_{n-1} c_2 | ... | p_{n-1} c_K
    shared part      branch 1      branch 2            branch K

- Each branch starts with the prompt's last token, so that the branch's first completion token is predicted inside
  the branch: position `t` always predicts the token at `t + 1` of its own segment.
- Attention: a token sees the shared part and the earlier tokens of its own branch, nothing else.
- Positions: every branch restarts where the shared part ends, at `n - 1` (`position_ids`).

Each branch then computes exactly what the row `p + c_k` computes alone: the same tokens at the same positions with
the same context. Only the order of floating-point sums inside the kernels differs.

**The tree** (`pack_tree`) cuts the same way one level higher. Prompts `q_1 .. q_G` (each with its completions) that
share their first `r` tokens become: the common part once (the root), then for each prompt its own remaining tokens
but the last (a context segment), then that prompt's branches as above. The layout above is the tree with one prompt.
The common part is computed on token ids, so a tokenizer that merges tokens across the end of the question cannot
break exactness: the prompts simply share less. A token attends to its ancestors' tokens and to the earlier tokens
of its own segment: in the row, a segment's subtree is one contiguous span, so the mask needs only where that span ends
(`exit_ids`: key `k` is visible from query `q` when `k <= q < exit_ids[k]`), the ancestor mask of
`allowed_attention`, or a FlexAttention `BlockMask` built from the same indices (`flex_block_mask`).

Truncation to `max_length` is applied to each full `prompt + completion` first, as TRL's preference collator does. A
prompt is shared by its completions only when every truncated sequence kept the same prompt tokens. Otherwise
(`keep_end` cut the prompt differently) each of its sequences is a prompt of its own with one completion, so the
numbers stay those of the unshared layout.

Segment ids name the parts of a row: `SHARED` for the root, `k` for branch `k` (from 1, in row order), `context_id(g)`
(negative) for the context segment of prompt `g`, `PADDING` after the row's end.

Not every attention implementation takes such a mask (flash attention does not), so the caller checks
`unsupported_reason` first and keeps one completion per row where it says no. SDPA models take long rows on a CPU
segment by segment instead of as one masked square (`attention_inputs`, `trl_sso.segment_attention`).
"""

import threading
import types
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from trl.kernels import chunked_logprob
from trl.kernels.chunked_logprob import ChunkedLogProbFunction, _use_triton
from trl.trainer.utils import add_fused_lm_head, pad

from . import segment_attention


SHARED = 0  # segment id of the shared part of a row
PADDING = -1  # segment id of padding
OTHER = -1_000  # segment id, in a view of a tree row for one pair, of everything that is not the pair's two branches
# Model families whose attention was checked to give the unshared log-probabilities in this layout (tests/test_sharing)
VERIFIED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi", "phi3"})
_FLEX_BLOCK = 128  # FlexAttention's default block size
# implementations that take the mask in training and scoring (SDPA models are switched to SDPA by segment,
# `trl_sso.segment_attention`); FlexAttention takes it as a `BlockMask` (`flex_block_mask`)
MASK_ATTENTION = ("sdpa", "eager", segment_attention.IMPLEMENTATION, "flex_attention")


def truncate(sequence: list, max_length: int | None, mode: str) -> list:
    """`sequence` cut to `max_length` items as TRL's preference collator cuts a prompt + completion: `keep_start`
    keeps the first items, `keep_end` the last."""
    if max_length is None:
        return sequence
    if mode == "keep_start":
        return sequence[:max_length]
    if mode == "keep_end":
        return sequence[-max_length:]
    raise ValueError(f"Unsupported truncation mode {mode!r}: use 'keep_start' or 'keep_end'.")


def truncated(prompt: list[int], completion: list[int], max_length: int | None, mode: str):
    """`prompt + completion` and its completion mask (1 on completion tokens), truncated together by `truncate`."""
    ids = truncate(prompt + completion, max_length, mode)
    return ids, truncate([0] * len(prompt) + [1] * len(completion), max_length, mode)


def context_id(group: int) -> int:
    """Segment id of the context segment of prompt `group` (from 0) in a tree row: negative, below `PADDING`."""
    return PADDING - 1 - group


def common_prefix(sequences: Sequence[list[int]]) -> int:
    """The number of leading items that all of `sequences` share."""
    length = min(len(sequence) for sequence in sequences)
    for index in range(length):
        if any(sequence[index] != sequences[0][index] for sequence in sequences[1:]):
            return index
    return length


def tree_pays(prompts: Sequence[list[int]]) -> bool:
    """Whether a tree row is worth its length for `prompts`: they begin alike for at least half of the shortest one
    (the principle after or inside the question). Otherwise (the principle in the system message, before the
    question) they share little beyond the template, and one row a prompt keeps the attention rows short."""
    return 2 * common_prefix(prompts) >= min(len(prompt) for prompt in prompts)


def pack_tree(
    groups: Sequence[tuple[list[int], Sequence[list[int]]]],
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
) -> dict[str, list[int]]:
    """One tree-layout row for `groups` of `(prompt, [completion, ...])`: `input_ids`, `position_ids`, `segment_ids`,
    `completion_mask` (1 on completion tokens) and `exit_ids` (where each token's subtree ends), as lists. The
    completions become branches `1 .. K` in the order given.

    Example: two prompts that share their first two tokens, with one and two completions.
    ```python
    >>> from trl_sso.sharing import pack_tree

    >>> row = pack_tree([([1, 2, 3], [[4]]), ([1, 2, 5, 6], [[7], [8, 9]])])
    >>> row["input_ids"], row["position_ids"]
    ([1, 2, 3, 4, 5, 6, 7, 6, 8, 9], [0, 1, 2, 3, 2, 3, 4, 3, 4, 5])
    >>> row["segment_ids"], row["exit_ids"]
    ([0, 0, 1, 1, -3, 2, 2, 3, 3, 3], [10, 10, 4, 4, 10, 7, 7, 10, 10, 10])

    ```
    """
    contexts, tails = [], []  # per sharing group: its kept prompt, and the kept completion tails (with their masks)
    for prompt, completions in groups:
        cut = [truncated(prompt, completion, max_length, truncation_mode) for completion in completions]
        kept = [sequence[: mask.count(0)] for sequence, mask in cut]
        if all(k == kept[0] for k in kept):
            contexts.append(kept[0])
            tails.append([(sequence[len(kept[0]) :], mask[len(kept[0]) :]) for sequence, mask in cut])
        else:  # truncation cut this prompt differently per completion: each sequence is a prompt of its own
            for (sequence, mask), prompt_kept in zip(cut, kept, strict=True):
                contexts.append(prompt_kept)
                tails.append([(sequence[len(prompt_kept) :], mask[len(prompt_kept) :])])
    # every prompt keeps at least its last token of its own: its branches start with it
    root = max(min(common_prefix(contexts), min(len(context) for context in contexts) - 1), 0) if contexts else 0
    row = {key: [] for key in ("input_ids", "position_ids", "segment_ids", "completion_mask")}
    spans = []  # per segment, in row order: (where it begins, the index of its parent segment)

    def add(ids, start, segment, parent, mask=None):
        spans.append((len(row["input_ids"]), parent))
        row["input_ids"] += ids
        row["position_ids"] += range(start, start + len(ids))
        row["segment_ids"] += [segment] * len(ids)
        row["completion_mask"] += mask if mask is not None else [0] * len(ids)

    add(contexts[0][:root] if contexts else [], 0, SHARED, None)
    branch = 0
    for group, (context, completions) in enumerate(zip(contexts, tails, strict=True)):
        add(context[root:-1], root, context_id(group), 0)
        parent, last = len(spans) - 1, context[-1:]
        for tail, mask in completions:
            branch += 1
            add(last + tail, len(context) - len(last), branch, parent, [0] * len(last) + mask)
    # a segment's subtree ends where the first later segment outside it begins (or at the row's end)
    total, exits = len(row["input_ids"]), []
    for index, (begin, _) in enumerate(spans):
        stop = spans[index + 1][0] if index + 1 < len(spans) else total
        outside = (spans[j][0] for j in range(index + 1, len(spans)) if not _descends(spans, j, index))
        exits += [next(outside, total)] * (stop - begin)
    row["exit_ids"] = exits
    return row


def _descends(spans, index: int, ancestor: int) -> bool:
    """Whether segment `index` lies in the subtree of segment `ancestor` (`spans` as `pack_tree` builds them)."""
    while index is not None and index != ancestor:
        index = spans[index][1]
    return index == ancestor


def pack(
    prompt: list[int],
    completions: Sequence[list[int]],
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
) -> dict[str, list[int]]:
    """One shared-layout row: the tree of one prompt (`pack_tree`).

    Example:
    ```python
    >>> from trl_sso.sharing import pack

    >>> row = pack([1, 2, 3], [[4, 5], [6]])
    >>> row["input_ids"], row["position_ids"]
    ([1, 2, 3, 4, 5, 3, 6], [0, 1, 2, 3, 4, 2, 3])
    >>> row["segment_ids"], row["completion_mask"]
    ([0, 0, 1, 1, 1, 2, 2], [0, 0, 0, 1, 1, 0, 1])
    >>> row["exit_ids"]
    [7, 7, 5, 5, 5, 7, 7]

    ```
    """
    return pack_tree([(prompt, completions)], max_length, truncation_mode)


def collate(rows: Sequence[dict[str, list[int]]], pad_token_id: int, pad_to_multiple_of: int | None = None):
    """Right-pad `pack` rows into `(rows, length)` tensors, with a 2D `attention_mask` (1 on real tokens)."""
    padding = {
        "input_ids": pad_token_id,
        "position_ids": 0,
        "segment_ids": PADDING,
        "completion_mask": 0,
        "exit_ids": 0,
    }
    batch = {
        key: pad(
            [torch.tensor(row[key], dtype=torch.long) for row in rows],
            padding_value=value,
            padding_side="right",
            pad_to_multiple_of=pad_to_multiple_of,
        )
        for key, value in padding.items()
    }
    batch["attention_mask"] = (batch["segment_ids"] != PADDING).long()
    index = torch.arange(1, batch["exit_ids"].size(1) + 1).expand_as(batch["exit_ids"])
    batch["exit_ids"] = torch.where(batch["attention_mask"].bool(), batch["exit_ids"], index)  # padding: itself only
    return batch


def scored_positions(segment_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """`(rows, length)` bool: the positions whose next token is a completion token of the same segment, i.e. the
    positions that predict a scored token. The last position predicts nothing."""
    scored = torch.zeros_like(completion_mask, dtype=torch.bool)
    scored[:, :-1] = completion_mask[:, 1:].bool() & (segment_ids[:, 1:] == segment_ids[:, :-1])
    return scored


def shift_labels(input_ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Labels already shifted by one (`shift_labels[:, t]` is the token position `t` predicts), -100 where nothing is
    scored."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    return labels.masked_fill(~scored, -100)


def branch_sums(per_token: torch.Tensor, segment_ids: torch.Tensor, num_branches: int) -> list[torch.Tensor]:
    """Sum a `(rows, length)` per-position tensor (zero where nothing is scored) over each branch: a list of
    `num_branches` tensors of shape `(rows,)`."""
    return [(per_token * (segment_ids == k)).sum(dim=1) for k in range(1, num_branches + 1)]


def allowed_attention(exit_ids: torch.Tensor, position_ids: torch.Tensor, sliding_window: int | None = None):
    """`(rows, 1, length, length)` bool, the ancestor mask: query `q` may attend to key `k` when `k <= q < exit_ids[k]`
    (`k` lies in `q`'s segment or in one of its ancestors), and (with a sliding window) when their positions are less
    than `sliding_window` apart. Padding ends where it begins, so every row of the mask allows its diagonal."""
    length = exit_ids.size(1)
    index = torch.arange(length, device=exit_ids.device)
    causal = index[None, :, None] >= index[None, None, :]
    allowed = causal & (index[None, :, None] < exit_ids[:, None, :])
    if sliding_window is not None:
        allowed &= (position_ids[:, :, None] - position_ids[:, None, :]) < sliding_window
    return allowed[:, None]


def flex_block_mask(exit_ids: torch.Tensor, position_ids: torch.Tensor, sliding_window: int | None = None):
    """The mask of `allowed_attention` as a FlexAttention `BlockMask`, for `attn_implementation="flex_attention"`:
    built from the same indices, so that blocks with nothing to attend to are skipped rather than masked. (On a CPU the
    trainer refuses FlexAttention: torch 2.13 has no backward there, and its compiled CPU kernel is wrong on some
    batches whatever the mask, tests/benchmarks/flex_cpu.py.)"""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = exit_ids.shape
    # FlexAttention asks about the indices of whole blocks (128), past the row's end too: pad the indices to a whole
    # number of blocks, the padding seeing only itself, so that no index is out of range and no length is a constant
    blocks = -(-length // _FLEX_BLOCK) * _FLEX_BLOCK
    index = torch.arange(1, blocks + 1, device=exit_ids.device).expand(rows, blocks)
    exits = torch.cat([exit_ids, index[:, length:]], dim=1)
    positions = torch.nn.functional.pad(position_ids, (0, blocks - length))

    def mask_mod(row, head, query, key):
        allowed = (key <= query) & (query < exits[row, key])
        if sliding_window is not None:
            allowed = allowed & (positions[row, query] - positions[row, key] < sliding_window)
        return allowed

    return create_block_mask(mask_mod, rows, None, length, length, device=exit_ids.device)


def _for_attention(exit_ids, position_ids, window, implementation: str, dtype: torch.dtype):
    """The mask in the form `implementation` takes: SDPA (by segment too) the boolean mask; eager attention adds it to
    its scores; FlexAttention a `BlockMask`."""
    if implementation == "flex_attention":
        return flex_block_mask(exit_ids, position_ids, window)
    allowed = allowed_attention(exit_ids, position_ids, window)
    if implementation in ("sdpa", segment_attention.IMPLEMENTATION):
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def attention_mask_for(config, dtype: torch.dtype, exit_ids: torch.Tensor, position_ids: torch.Tensor):
    """The attention mask that a model with `config`, computing in `dtype`, takes for shared rows (`exit_ids` and
    `position_ids` of `collate`): one mask, or one per layer type when the model mixes full and sliding-window layers
    (e.g. Gemma 2)."""
    implementation = config._attn_implementation
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or ())
    if not layer_types:  # every layer alike: windowed when the config has a window (Mistral, Phi-3)
        return _for_attention(exit_ids, position_ids, window, implementation, dtype)
    masks = {
        layer_type: _for_attention(
            exit_ids, position_ids, window if layer_type == "sliding_attention" else None, implementation, dtype
        )
        for layer_type in layer_types
    }
    return next(iter(masks.values())) if len(masks) == 1 else masks


def attention_inputs(config, dtype: torch.dtype, batch: dict, prefix: str = "") -> dict:
    """The attention arguments of a forward of the shared rows under `prefix` in `batch` (`collate`'s keys): their
    mask (`attention_mask_for`) and, for a model that computes by segment where that pays (long rows, on a CPU),
    the segments (`trl_sso.segment_attention`)."""
    exit_ids, segment_ids = batch[f"{prefix}exit_ids"], batch[f"{prefix}segment_ids"]
    inputs = {"attention_mask": attention_mask_for(config, dtype, exit_ids, batch[f"{prefix}position_ids"])}
    if config._attn_implementation == segment_attention.IMPLEMENTATION and segment_attention.pays(
        exit_ids.size(1), exit_ids.device
    ):
        inputs["sso_segments"] = segment_attention.segment_plan(segment_ids, exit_ids, PADDING)
    return inputs


def mask_settings(model) -> tuple:
    """`(config, dtype)` of `model` (a model, or a PEFT model around one) for `attention_mask_for`."""
    config = model_config(model)
    dtype = model.get_input_embeddings().weight.dtype
    return config, dtype if dtype.is_floating_point else torch.float32


def model_config(model):
    """The transformers config of `model`, a model or a PEFT model around one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def unsupported_reason(model) -> str | None:
    """Why `model` cannot forward shared rows exactly, or None when it can."""
    peft_config = getattr(model, "peft_config", None) or {}
    if any(getattr(config, "is_prompt_learning", False) for config in peft_config.values()):
        return "its prompt-learning adapter prepends virtual tokens that the shared-prompt mask does not cover"
    config = model_config(model)
    model_type = getattr(config, "model_type", None)
    if model_type not in VERIFIED_MODEL_TYPES:
        return (
            f"its model type {model_type!r} has not been verified with the shared-prompt mask (verified: "
            f"{', '.join(sorted(VERIFIED_MODEL_TYPES))})"
        )
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in MASK_ATTENTION:
        return (
            f"its attention implementation {implementation!r} cannot take the shared-prompt mask; load the model with "
            "`attn_implementation='sdpa'` to share prompts"
        )
    other = set(getattr(config, "layer_types", None) or ()) - {"full_attention", "sliding_attention"}
    if other:
        return f"it has layers of type {sorted(other)}, which the shared-prompt mask does not model"
    return None


def _fused_forward_of(model):
    """The function of the fused forward that TRL's `add_fused_lm_head` set on `model`, or None. TRL sets it as the
    instance's `forward`; `functools.wraps` gives it the name of the model's own forward, so it is told apart by its
    code's name (`tests/test_sharing.py` guards that shape of TRL's source)."""
    function = getattr(model.__dict__.get("forward"), "__func__", None)
    return function if getattr(getattr(function, "__code__", None), "co_name", None) == "_fused_forward" else None


def _compact_on_cpu(device) -> bool:
    """TRL's choice of compacting the fused LM head's positions (`_use_triton`), and on a CPU too."""
    return device.type == "cpu" or _use_triton(device)


# Tokens per tile of the fused LM head on a CPU. TRL's tiles hold 4,096 tokens (`TOKEN_CHUNK_SIZE`), sized for a GPU;
# on a CPU a tile is folded by whole-tile torch operations, each with a temporary of the tile's size: 1,800 scored
# tokens x 32,768 vocabulary entries is 236 MB per temporary, fresh pages from the kernel on every call. Tiles of 128
# tokens (16 MB) stay in the allocator's heap and in cache: TRL's function over 1,800 tokens of SmolLM2's head,
# forward and backward on 2 cores, took 9.3 s with 1.37M page faults at 4,096 tokens a tile, 7.1 s with 28k at 128
# (tests/benchmarks/results/bench_head_cpu.txt). The numbers are the same: each token's statistics are folded as
# before.
CPU_HEAD_TOKENS = 128


def with_token_tiles(function: type, tokens: int) -> type:
    """A copy of TRL's `ChunkedLogProbFunction` (an autograd function, `function`) whose tiles hold `tokens` tokens:
    its forward and backward, run with the kernel module's names but `TOKEN_CHUNK_SIZE`."""
    names = dict(vars(chunked_logprob), TOKEN_CHUNK_SIZE=tokens)

    def copy(method):
        code = method.__code__
        return staticmethod(types.FunctionType(code, names, method.__name__, method.__defaults__, method.__closure__))

    methods = {"forward": copy(function.forward), "backward": copy(function.backward)}
    return type(f"{function.__name__}In{tokens}TokenTiles", (torch.autograd.Function,), methods)


CPU_TILED_LOG_PROBS = with_token_tiles(ChunkedLogProbFunction, CPU_HEAD_TOKENS)


class _LogProbsByDevice:
    """What the compacted fused head calls for `ChunkedLogProbFunction`: TRL's own on an accelerator, its copy with
    CPU-sized tiles (`CPU_HEAD_TOKENS`) on a CPU."""

    @staticmethod
    def apply(hidden: torch.Tensor, *rest):
        function = CPU_TILED_LOG_PROBS if hidden.device.type == "cpu" else ChunkedLogProbFunction
        return function.apply(hidden, *rest)


_PREPARING = threading.Lock()


def prepare_scoring(model, outputs: tuple[str, ...] = ("log_probs",)):
    """Give `model` (a model, or a PEFT model around one) TRL's fused LM head once, and have its head project only
    the positions that carry a label on a CPU too. Returns `model`. Safe to call again and from several threads.

    - A model TRL already patched (a trainer's) keeps its head and the outputs it was given (`entropy` and more):
      scoring does not patch it again with fewer.
    - TRL compacts the positions on CUDA and XPU only: on devices that compile graphs (e.g. Neuron), a number of
      positions that changes from batch to batch would recompile. A CPU runs eagerly, and scoring every position there,
      prompts and padding included, costs a fifth of a small model's step (its vocabulary projection) plus the memory
      of its logits. The head gets a copy of TRL's fused forward whose `_use_triton` also says yes on a CPU, so no
      global is swapped per call; the log-probabilities are the same, each scored position being computed as before.
    - On a CPU the same copy projects in tiles of `CPU_HEAD_TOKENS` tokens rather than TRL's GPU-sized ones
      (`CPU_TILED_LOG_PROBS`): faster, and the peak memory of a long row's head is a few tiles of 16 MB.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    with _PREPARING:
        if _fused_forward_of(target) is None:
            add_fused_lm_head(target, outputs=outputs)
        function = _fused_forward_of(target)
        if not getattr(function, "_sso_compact", False):
            names = dict(function.__globals__, _use_triton=_compact_on_cpu, _ChunkedLogProbFunction=_LogProbsByDevice)
            compact = types.FunctionType(
                function.__code__, names, function.__name__, function.__defaults__, function.__closure__
            )
            compact.__kwdefaults__ = function.__kwdefaults__
            compact.__dict__.update(function.__dict__, _sso_compact=True)  # keeps `__wrapped__`: the signature
            target.forward = types.MethodType(compact, target)
    return model


def completion_logps(
    model,
    rows: Sequence[tuple[list[int], Sequence[list[int]]]],
    pad_token_id: int,
    batch_size: int = 8,
    desc: str | None = None,
) -> list[list[tuple[float, int]]]:
    """Score completions without gradients: for each `(prompt_ids, [completion_ids, ...])` of `rows`, the summed
    log-probability of each completion after the prompt and its number of tokens.

    The prompt is forwarded once for all its completions when `model` takes the shared-prompt mask; otherwise each
    completion gets a row of its own. Rows are forwarded `batch_size` at a time, shortest first, through TRL's fused LM
    head (`prepare_scoring`), so the `(rows, length, vocabulary)` logits are never materialised. A progress bar shows
    when `desc` is set.
    """
    prepare_scoring(model)
    share = unsupported_reason(model) is None
    if share:
        segment_attention.use_segment_attention(model)
    packed, owners = [], []  # packed rows, and where each one's completions belong: (row of `rows`, first, count)
    for index, (prompt, completions) in enumerate(rows):
        groups = [(0, list(completions))] if share else [(k, [c]) for k, c in enumerate(completions)]
        for first, group in groups:
            if group:
                packed.append(pack(prompt, group))
                owners.append((index, first, len(group)))
    results = [[(0.0, 0)] * len(completions) for _, completions in rows]
    order = sorted(range(len(packed)), key=lambda i: len(packed[i]["input_ids"]))
    config, dtype = mask_settings(model)
    device = model.get_input_embeddings().weight.device
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([packed[i] for i in chunk], pad_token_id).items()}
        segments, positions = batch["segment_ids"], batch["position_ids"]
        scored = scored_positions(segments, batch["completion_mask"])
        attention = attention_inputs(config, dtype, batch) if share else {"attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            outputs = model(
                input_ids=batch["input_ids"],
                **attention,
                position_ids=positions,
                shift_labels=shift_labels(batch["input_ids"], scored),
                use_cache=False,
                fused_lm_head=True,
            )
        branches = int(segments.max())
        sums = torch.stack(branch_sums(outputs.log_probs.float(), segments, branches), dim=1).tolist()
        counts = torch.stack(branch_sums(scored.long(), segments, branches), dim=1).tolist()
        for row, i in enumerate(chunk):
            index, first, count = owners[i]
            for k in range(count):
                results[index][first + k] = (sums[row][k], counts[row][k])
    return results
