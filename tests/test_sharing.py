"""The shared-prompt layout (`trl_sso.sharing`, `sso_share_prompt`) gives the numbers of DPO's two-row layout.

- the layout itself: exact rows, truncation, labels, masks;
- every verified model family, random weights, sdpa, eager, SDPA by segment (`trl_sso.segment_attention`) and
  FlexAttention's block mask (through torch's eager kernel: `flex_attention_kernel` says why): per-sequence log-probs
  equal to those of the unshared rows, with sliding windows that bite (and a mask without the window as a negative
  control);
- SSOTrainer on tiny Llama, Qwen2 (mixed full and sliding-window layers) and Mistral (sliding window): the same
  per-sequence log-probs, loss, metrics and gradients with and without sharing, for both objectives, with LoRA, with
  `keep_start` / `keep_end` truncation and through `training_step` with gradient accumulation; precomputed
  reference log-probs;
- a FlexAttention model gets the tree as block masks from the trainer, with the loss of two rows (forward only);
- models that cannot take the mask keep two rows, with one warning naming the model and the reason; FlexAttention on
  a CPU is refused.
"""

import contextlib
import logging
import os
import warnings
from unittest import mock

import pytest
import torch
from conftest import count_sdpa_calls, policy_and_reference, save_tiny_model, sso_args, sso_dataset
from numerics import assert_close_to_scale
from peft import LoraConfig

from trl_sso import SSOTrainer, segment_attention, sharing


pytestmark = pytest.mark.usefixtures("each_thread_count")
# Tolerances (tests/numerics.py: every entry against the scale of its tensor)
# - per-sequence log-probs: 1e-6 of the batch's largest |sum| (8 units in the last place of an fp32 sum of 130 nats);
LOGP_RTOL = 1e-6
# - gradients: 1e-5 of the tensor's largest entry, above the summation-order noise across CPUs and threads;
GRAD_RTOL = 1e-5
# - a 4-bit model with a bf16 adapter: gradients to 2^-5 of the largest entry, 8 units in bf16's last place (2^-8), as
#   each pair and micro-batch adds into the bf16 gradient with its own rounding (measured: up to 3 units); log-probs
#   to 1e-5, as the adapter's bf16 products round its share of the logits (measured: 2.2e-6 with scalar kernels).
BF16_GRAD_RTOL = 2**-5
BF16_LOGP_RTOL = 1e-5


def test_pack_truncates_each_sequence_as_the_two_row_layout_does():
    prompt, winner, loser = [1, 2, 3, 4], [5, 6, 7], [8]
    # keep_start: the prompt is kept whole, so it is shared; the winner is cut
    row = sharing.pack(prompt, [winner, loser], max_length=6, truncation_mode="keep_start")
    assert row["input_ids"] == [1, 2, 3, 4, 5, 6, 4, 8]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 5, 3, 4]
    # keep_end: the two sequences keep different parts of the prompt, so each is a prompt of its own with one branch
    row = sharing.pack(prompt, [winner, loser], max_length=5, truncation_mode="keep_end")
    assert row["input_ids"] == [3, 4, 5, 6, 7, 1, 2, 3, 4, 8]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    first, second = sharing.context_id(0), sharing.context_id(1)
    assert row["segment_ids"] == [first, 1, 1, 1, 1, second, second, second, 2, 2]
    assert row["exit_ids"] == [5] * 5 + [10] * 5  # nothing shared: each sequence sees only itself
    assert row["completion_mask"] == [0, 0, 1, 1, 1, 0, 0, 0, 0, 1]


def test_labels_and_mask_of_a_collated_row():
    batch = sharing.collate([sharing.pack([1, 2, 3], [[4, 5], [6]]), sharing.pack([7], [[8], [9]])], pad_token_id=0)
    scored = sharing.scored_positions(batch["segment_ids"], batch["completion_mask"])
    assert sharing.shift_labels(batch["input_ids"], scored).tolist() == [
        [-100, -100, 4, 5, -100, 6, -100],
        [8, -100, 9, -100, -100, -100, -100],
    ]
    allowed = sharing.allowed_attention(batch["exit_ids"], batch["position_ids"])[0, 0].int()
    assert allowed[5].tolist() == [1, 1, 0, 0, 0, 1, 0]  # the loser's first token: the shared part and itself
    assert allowed[4].tolist() == [1, 1, 1, 1, 1, 0, 0]  # the winner's last token: the shared part and the winner
    assert bool(allowed.diagonal().all())  # padding included: no row is fully masked


FAMILIES = {  # model type: config overrides (head_dim for the families that read it; sliding windows that bite)
    "llama": {},
    "qwen2": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
    "qwen3": {"head_dim": 16},
    "mistral": {"sliding_window": 6},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 6},
    "phi": {},
    "phi3": {"sliding_window": 6, "pad_token_id": 0},
}


def test_every_verified_family_is_tested():
    assert set(FAMILIES) == sharing.VERIFIED_MODEL_TYPES


def unshared_logps(model, prompt, completions, max_length, mode):
    """Summed completion log-probs of each `prompt + completion`, truncated and forwarded alone."""
    values = []
    for completion in completions:
        ids, mask = sharing.truncated(prompt, completion, max_length, mode)
        mask = torch.tensor(mask)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        values.append((logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0] * mask[1:]).sum())
    return torch.stack(values)


def shared_logps(model, rows, num_branches, window_off=False):
    """Summed log-probs of each branch of `rows`, forwarded as the trainer forwards them (`attention_inputs`): a model
    that computes by segment does so on these short rows too."""
    batch = sharing.collate(rows, pad_token_id=0)
    config, dtype = sharing.mask_settings(model)
    with mock.patch.object(segment_attention, "MIN_LENGTH", 0):
        attention = sharing.attention_inputs(config, dtype, batch)
    if config._attn_implementation == segment_attention.IMPLEMENTATION:
        assert "sso_segments" in attention
    if window_off:
        attention["attention_mask"] = sharing._for_attention(
            batch["exit_ids"], batch["position_ids"], None, config._attn_implementation, dtype
        )
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **attention).logits
    scored = sharing.scored_positions(batch["segment_ids"], batch["completion_mask"])
    labels = sharing.shift_labels(batch["input_ids"], scored)
    per_token = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] * scored
    return torch.stack(sharing.branch_sums(per_token, batch["segment_ids"], num_branches), dim=1)


# Gemma 2 runs with eager attention only in transformers (its logits soft-capping); FlexAttention soft-caps in its
# score function, so Gemma 2 takes the block mask too
IMPLEMENTATIONS = ("sdpa", "eager", segment_attention.IMPLEMENTATION, "flex_attention")
ATTENTION = [(t, a) for t in FAMILIES for a in IMPLEMENTATIONS if not (t == "gemma2" and "sdpa" in a)]


@contextlib.contextmanager
def flex_attention_kernel(attention: str):
    """For FlexAttention models, torch's eager FlexAttention in place of the compiled one that transformers calls.

    The compiled CPU kernel of torch 2.13 is not fit to test against: on half or more of the batches of a process it
    fails to build (an undeclared `cur_qSplitSize0` in the generated C++) or returns NaN or errors of a third of the
    logits, with transformers' own causal masks as with the block mask, while the eager function is right on all of
    them (tests/benchmarks/flex_cpu.py). The eager function has the same semantics: what is tested is the block mask,
    the score function (Gemma 2's soft-capping) and transformers' path through both."""
    if attention != "flex_attention":
        yield
        return
    from transformers.integrations import flex_attention as integration

    # the global that transformers' FlexAttention forward calls, so that replacing it takes effect
    assert "compile_friendly_flex_attention" in integration.flex_attention_forward.__code__.co_names
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        with mock.patch.object(integration, "compile_friendly_flex_attention", eager_flex_attention):
            yield


def eager_flex_attention(query, key, value, training=False, **kwargs):
    """Torch's FlexAttention, not compiled, called as transformers calls its compiled one."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(query, key, value, **kwargs)


@pytest.mark.parametrize("model_type,attention", ATTENTION)
def test_shared_rows_give_the_log_probs_of_unshared_rows(model_type, attention):
    with flex_attention_kernel(attention):
        check_shared_rows(model_type, attention)


def check_shared_rows(model_type, attention):
    model = tiny_family_model(model_type, attention)
    assert sharing.unsupported_reason(model) is None
    prompts = [torch.randint(1, 300, (n,)).tolist() for n in (9, 5)]
    completions = [[torch.randint(1, 300, (n,)).tolist() for n in (7, 4, 5)], [[11, 12], [13, 14, 15]]]
    for max_length, mode in ((None, "keep_start"), (14, "keep_start"), (14, "keep_end")):
        rows = [sharing.pack(p, c, max_length, mode) for p, c in zip(prompts, completions)]
        shared = shared_logps(model, rows, num_branches=3)
        for row, (prompt, comps) in enumerate(zip(prompts, completions)):
            expected = unshared_logps(model, prompt, comps, max_length, mode)
            assert_close_to_scale(shared[row, : len(comps)], expected, LOGP_RTOL, name=f"row {row}, {mode}")
    if getattr(model.config, "sliding_window", None):  # negative control: the window matters at these lengths
        rows = [sharing.pack(p, c) for p, c in zip(prompts, completions)]
        assert not torch.allclose(shared_logps(model, rows, 3, window_off=True), shared_logps(model, rows, 3))


def tiny_family_model(model_type, attention, seed=0):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        **{
            "vocab_size": 300,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            **FAMILIES[model_type],
        },
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


def sso_record(seed: int):
    """The three pairs of an SSO record as token ids, with the principle after the question: x, x+ and x- share the
    template's header and the question, then differ (x+ / x- carry a principle), and end alike."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(n):
        return torch.randint(1, 300, (n,), generator=generator).tolist()

    header, question, end = tokens(3), tokens(6 + seed), tokens(2)
    x, x_pos, x_neg = header + question + end, header + question + tokens(4) + end, header + question + tokens(3) + end
    y_pos, y_neg, y_o = tokens(5), tokens(3 + seed), tokens(4)
    return [(x, [y_pos, y_neg]), (x_pos, [y_pos, y_neg]), (x_neg, [y_o, y_pos])]


@pytest.mark.parametrize("model_type,attention", ATTENTION)
def test_tree_rows_give_the_log_probs_of_unshared_rows(model_type, attention):
    """One row per SSO record (`pack_tree`: the common beginning of x, x+ and x- once, each context's own tokens, then
    its two responses) gives each of the six sequences the log-probs it has alone, under each truncation mode; with a
    mask that lets the branches see each other (the negative control) it does not."""
    with flex_attention_kernel(attention):
        check_tree_rows(model_type, attention)


def check_tree_rows(model_type, attention):
    model = tiny_family_model(model_type, attention)
    records = [sso_record(0), sso_record(1)]  # of different lengths: the batch pads one row
    for max_length, mode in ((None, "keep_start"), (16, "keep_start"), (16, "keep_end")):
        rows = [sharing.pack_tree(record, max_length, mode) for record in records]
        tree = shared_logps(model, rows, num_branches=6)
        for index, record in enumerate(records):
            expected = torch.cat([unshared_logps(model, x, ys, max_length, mode) for x, ys in record])
            assert_close_to_scale(tree[index], expected, LOGP_RTOL, name=f"record {index}, {max_length}, {mode}")
    rows = [sharing.pack_tree(record) for record in records]
    assert len(rows[0]["input_ids"]) < sum(len(x) + len(y) for x, ys in records[0] for y in ys)  # shares the question
    leaky = [dict(row, exit_ids=[len(row["input_ids"])] * len(row["input_ids"])) for row in rows]  # plain causal
    assert not torch.allclose(shared_logps(model, leaky, 6), shared_logps(model, rows, 6), atol=1e-4)


def test_a_tree_of_one_prompt_is_the_shared_layout():
    """`pack` is `pack_tree` of one prompt: the layout of today's shared rows (the depth-one tree)."""
    prompt, completions = [1, 2, 3, 4], [[5, 6], [7]]
    assert sharing.pack(prompt, completions) == sharing.pack_tree([(prompt, completions)])
    row = sharing.pack_tree([(prompt, completions)])
    assert sharing.SHARED in row["segment_ids"] and min(row["segment_ids"]) == sharing.SHARED  # no context segment


def test_the_tree_shares_what_the_token_ids_share():
    """The common part is found on token ids: contexts that differ from their first token share nothing (the `system`
    placement's principle comes first), and each still gets exactly its own sequences."""
    rows = sharing.pack_tree([([9, 1, 2], [[3]]), ([8, 1, 2], [[4]])])
    assert rows["input_ids"] == [9, 1, 2, 3, 8, 1, 2, 4] and rows["position_ids"] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert rows["exit_ids"] == [4] * 4 + [8] * 4


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_flex_attention_takes_the_mask_as_block_masks(model_type):
    """A FlexAttention model gets `BlockMask`s built from the segment indices, one per layer type where the model mixes
    full and sliding-window layers, and blocks that a row's segments never see are skipped rather than masked."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = tiny_family_model(model_type, "flex_attention")
    assert sharing.unsupported_reason(model) is None
    # 128 prompt tokens shared (block 0), then two branches of 141 tokens: the first in blocks 1-2, the second in 2-3
    rows = [sharing.pack_tree([(list(range(1, 130)), [[5] * 140, [6] * 140])])]
    batch = sharing.collate(rows, pad_token_id=0)
    config, dtype = sharing.mask_settings(model)
    masks = sharing.attention_mask_for(config, dtype, batch["exit_ids"], batch["position_ids"])
    for layer_type, mask in masks.items() if isinstance(masks, dict) else [("full_attention", masks)]:
        assert type(mask).__name__ == "BlockMask"
        computed = mask.to_dense()[0, 0].bool()  # (query blocks, key blocks): the blocks FlexAttention computes
        assert computed.shape == (4, 4)
        assert bool(computed[3, 3])  # the second branch sees itself,
        assert bool(computed[3, 0]) == (layer_type == "full_attention")  # the prompt unless a window of 6 hides it,
        assert not bool(computed[3, 1])  # and skips the block that holds only the first branch
    if model_type == "gemma2":
        assert set(masks) == {"full_attention", "sliding_attention"}


# ---------------------------------------------------------------------------------------------------------------------
# SSOTrainer

TRAINER_FAMILIES = {  # sliding windows shorter than the test sequences, so that they bite
    "llama": {},
    "qwen2": {"use_sliding_window": True, "sliding_window": 24, "max_window_layers": 1},
    "mistral": {"sliding_window": 24},
}


@pytest.fixture(scope="module", params=list(TRAINER_FAMILIES))
def family_dir(request, tokenizer_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    return save_tiny_model(tokenizer, folder, request.param, **TRAINER_FAMILIES[request.param])


def run_both_layouts(model_dir, tokenizer, tmp_path, lora=False, qlora=False, **overrides):
    """For `sso_share_prompt` True and False: the per-sequence log-probs of every pair, the loss summed over two
    micro-batches of `training_step` with gradient accumulation 2, the gradients and the logged metrics."""
    layouts = ({"sso_share_prompt": True}, {"sso_share_prompt": False})
    return run_layouts(model_dir, tokenizer, tmp_path, layouts, lora, qlora, **overrides)


def run_layouts(model_dir, tokenizer, tmp_path, layouts, lora=False, qlora=False, **overrides):
    """`run_both_layouts` for each of `layouts` (`SSOConfig` overrides)."""
    results = []
    by_segment = mock.patch.object(segment_attention, "MIN_LENGTH", 0)  # the shared rows of SDPA models, by segment
    for number, layout in enumerate(layouts):
        share = layout["sso_share_prompt"]
        torch.manual_seed(0)
        if qlora:
            from transformers import BitsAndBytesConfig

            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
            kwargs = {"model": model_dir, "quantization_config": quantization}
        else:
            kwargs = {"model": policy_and_reference(model_dir)["model"]} if lora else policy_and_reference(model_dir)
        lora = lora or qlora
        peft = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False) if lora else None
        args = sso_args(tmp_path / str(number), **layout, **overrides)
        trainer = SSOTrainer(
            **kwargs, args=args, train_dataset=sso_dataset(), processing_class=tokenizer, peft_config=peft
        )
        assert trainer.data_collator.share_prompt is share
        if args.gradient_checkpointing:  # as `train()` does
            trainer.model.activation_checkpointing_enable()
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 2  # set by `train()` in normal use
        batches = [
            trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in indices]))
            for indices in ((0, 1), (2, 3))
        ]
        with by_segment:
            with torch.no_grad():
                logps = {
                    pair: torch.cat(trainer._forward_pair(trainer.model, batches[0], pair)[0])
                    for pair in trainer.sso_pairs
                }
            trainer.model.zero_grad()
            loss = sum(trainer.training_step(trainer.model, batch) for batch in batches)
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
        metrics = {k: v for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
        results.append((logps, loss, grads, metrics, batches[0]))
    return results


def assert_same_numbers(shared, unshared, grad_rtol=GRAD_RTOL, logp_rtol=LOGP_RTOL):
    """Same log-probs, loss, gradients and metrics, the tensors to the scale of each tensor (tests/numerics.py)."""
    (logps, loss, grads, metrics, _), (expected_logps, expected_loss, expected_grads, expected_metrics, _) = (
        shared,
        unshared,
    )
    for pair, values in expected_logps.items():
        assert_close_to_scale(logps[pair], values, logp_rtol, name=pair)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in expected_grads.items():
        assert_close_to_scale(grads[name], grad, grad_rtol, name=name)
    # every logged metric is a function of the log-probs with a slope of order 1 at most (rewards carry beta), so its
    # rounding is at most theirs: the log-probs' scale is its scale (a reward of 0.04 is a difference of two sums of
    # 130 nats, and carries their rounding)
    logp_scale = max(values.abs().max().item() for values in expected_logps.values())
    assert metrics.keys() == expected_metrics.keys()
    for name, values in expected_metrics.items():
        assert_close_to_scale(torch.tensor(metrics[name]), torch.tensor(values), logp_rtol, logp_scale, name=name)


CASES = {  # both objectives on every family, each with one truncation mode; the rest on Llama
    "policy, keep_start truncation": {"max_length": 48},
    "generator, keep_end truncation": {"sso_objective": "generator", "max_length": 48, "truncation_mode": "keep_end"},
}
LLAMA_CASES = {
    "policy, one backward pass, ipo, W detached": {
        "sso_backward_per_pair": False,
        "loss_type": "ipo",
        "sso_detach_weight": True,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_numbers_do_not_depend_on_the_layout(family_dir, tokenizer, tmp_path, case):
    shared, unshared = run_both_layouts(family_dir, tokenizer, tmp_path, **CASES[case])
    # the shared layout forwards fewer tokens than the two-row one
    shared_batch, unshared_batch = shared[-1], unshared[-1]
    assert shared_batch["pos_attention_mask"].sum() < unshared_batch["pos_attention_mask"].sum()
    assert_same_numbers(shared, unshared)


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_more_trainer_settings_do_not_depend_on_the_layout(tiny_model_dir, tokenizer, tmp_path, case):
    assert_same_numbers(*run_both_layouts(tiny_model_dir, tokenizer, tmp_path, **LLAMA_CASES[case]))


# the tree: one row per example where x, x+ and x- begin alike (the principle after the question)
TREE = {"sso_principle_placement": "after_question"}
THREE_LAYOUTS = (
    {"sso_share_prompt": True, "sso_share_across_pairs": True},  # the tree
    {"sso_share_prompt": True, "sso_share_across_pairs": False},  # one shared row per pair
    {"sso_share_prompt": False},  # DPO's two rows per pair
)
TREE_CASES = {  # the first on every family, against both other layouts; the rest on Llama, against one row a pair
    "policy, per-pair plan asked": {"max_length": 64},
}
LLAMA_TREE_CASES = {
    "policy, keep_end truncation, ld_alpha, WPO weighting": {
        "max_length": 48, "truncation_mode": "keep_end", "ld_alpha": 0.5, "use_weighting": True
    },
    "generator objective (two pairs), gradient checkpointing": {
        "sso_objective": "generator", "gradient_checkpointing": True
    },
}  # fmt: skip


@pytest.mark.parametrize("case", list(TREE_CASES))
def test_the_tree_gives_the_numbers_of_the_other_layouts(family_dir, tokenizer, tmp_path, case):
    """One tree row per example: the log-probs, the loss, the gradients and the metrics of the shared-prompt layout
    and of the two-row layout, with fewer tokens forwarded than either. The whole example being one forward pass, the
    step backpropagates once: the per-pair plan is not used (`sso_backward_per_pair` applies to the other layouts)."""
    tree, shared, two_rows = run_layouts(family_dir, tokenizer, tmp_path, THREE_LAYOUTS, **TREE, **TREE_CASES[case])
    batch = tree[-1]
    assert "tree_input_ids" in batch and "tree_input_ids" not in shared[-1]
    pairs = [prefix for prefix in ("", "pos_", "neg_") if f"{prefix}input_ids" in shared[-1]]
    assert batch["tree_attention_mask"].sum() < sum(shared[-1][f"{p}attention_mask"].sum() for p in pairs)
    assert_same_numbers(tree, shared)
    assert_same_numbers(tree, two_rows)


def test_the_trainer_gives_flex_attention_models_the_tree_as_block_masks(family_dir, tokenizer, tmp_path, monkeypatch):
    """What the trainer does with a FlexAttention model on a GPU, checked forward-only on a CPU (torch has no
    FlexAttention backward there; its eager kernel, `flex_attention_kernel`): the tree goes to the policy and the
    reference as `BlockMask`s, and the pairs' log-probs, the loss and the metrics are those of DPO's two rows a pair.
    The gradients can only be compared on a GPU (tests/gpu/checks.py, "layouts on the device")."""
    built, build = [], sharing.flex_block_mask
    monkeypatch.setattr(sharing, "flex_block_mask", lambda *args: built.append(1) or build(*args))
    results = []
    for number, layout in enumerate((THREE_LAYOUTS[0], THREE_LAYOUTS[2])):
        args = sso_args(tmp_path / str(number), **TREE, **layout)
        trainer = SSOTrainer(**policy_and_reference(family_dir), args=args, train_dataset=sso_dataset(),
                             processing_class=tokenizer)  # fmt: skip
        if layout["sso_share_prompt"]:  # the models as loaded with `attn_implementation="flex_attention"`
            for model in (trainer.model, trainer.ref_model):
                model.set_attn_implementation("flex_attention")
            assert sharing.unsupported_reason(trainer.model) is None
        trainer.model.train()
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)]))
        with flex_attention_kernel("flex_attention"), torch.no_grad():
            logps = {p: torch.cat(trainer._forward_pair(trainer.model, batch, p)[0]) for p in trainer.sso_pairs}
            loss = trainer.compute_loss(trainer.model, batch)
        metrics = {k: v for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
        results.append((logps, loss, metrics, batch))
    (logps, loss, metrics, batch), (expected_logps, expected_loss, expected_metrics, _) = results
    assert "tree_input_ids" in batch and built  # the tree, through block masks
    for pair, values in expected_logps.items():
        assert_close_to_scale(logps[pair], values, LOGP_RTOL, name=pair)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    logp_scale = max(values.abs().max().item() for values in expected_logps.values())
    assert metrics.keys() == expected_metrics.keys()
    for name, values in expected_metrics.items():
        assert_close_to_scale(torch.tensor(metrics[name]), torch.tensor(values), LOGP_RTOL, logp_scale, name=name)


@pytest.mark.parametrize("case", list(LLAMA_TREE_CASES))
def test_more_settings_give_the_tree_the_numbers_of_one_row_a_pair(tiny_model_dir, tokenizer, tmp_path, case):
    layouts = THREE_LAYOUTS[:2]
    tree, shared = run_layouts(tiny_model_dir, tokenizer, tmp_path, layouts, **TREE, **LLAMA_TREE_CASES[case])
    assert "tree_input_ids" in tree[-1]
    pairs = [prefix for prefix in ("", "pos_", "neg_") if f"{prefix}input_ids" in shared[-1]]
    # keep_end cuts the common beginning, so the tree may share nothing: never more tokens, though
    assert tree[-1]["tree_attention_mask"].sum() <= sum(shared[-1][f"{p}attention_mask"].sum() for p in pairs)
    assert_same_numbers(tree, shared)


def test_the_tree_steps_with_one_backward_pass(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """With a tree batch, `training_step` is the parent's (one backward of the whole loss), and the tree is forwarded
    once for the policy and once for the reference, whatever the number of pairs."""
    args = sso_args(tmp_path, sso_share_across_pairs=True, **TREE)
    trainer = SSOTrainer(**policy_and_reference(tiny_model_dir), args=args, train_dataset=sso_dataset(),
                         processing_class=tokenizer)  # fmt: skip
    trainer.model.train()
    assert trainer._backward_per_pair(trainer.model)  # asked for, and possible: it is the tree that rules it out
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)]))
    assert "tree_input_ids" in batch
    forwards = {"policy": 0, "reference": 0}
    for name, model in (("policy", trainer.model), ("reference", trainer.ref_model)):
        model.register_forward_hook(lambda *args, name=name: forwards.__setitem__(name, forwards[name] + 1))
    shares = []
    monkeypatch.setattr(trainer, "_backward_share", lambda *args, **kwargs: shares.append(args[0]))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by `train()` in normal use
    trainer.training_step(trainer.model, batch)
    assert forwards == {"policy": 1, "reference": 1} and shares == []  # three pairs, one forward each, no per-pair
    assert trainer._tree_outputs is None  # nothing kept past the step


def test_sdpa_models_compute_long_shared_rows_by_segment(tmp_path, monkeypatch):
    """A model switched to SDPA by segment runs one SDPA call per segment on rows of `MIN_LENGTH` tokens and more,
    SDPA's dense masked call on shorter ones, and plain SDPA (the same numbers) where no segments are passed; the
    switch is not saved with the model."""
    model = tiny_family_model("llama", "sdpa")
    assert segment_attention.use_segment_attention(model)
    assert model.config._attn_implementation == segment_attention.IMPLEMENTATION
    rows = [sharing.pack_tree(record) for record in (sso_record(0), sso_record(1))]
    batch = sharing.collate(rows, pad_token_id=0)
    plan = segment_attention.segment_plan(batch["segment_ids"], batch["exit_ids"], sharing.PADDING)
    assert [len(row) for row in plan] == [10, 10]  # root, three contexts, six branches
    calls = count_sdpa_calls(monkeypatch)
    shared_logps(model, rows, 6)  # MIN_LENGTH patched to 0
    assert len(calls) == model.config.num_hidden_layers * 20
    calls.clear()
    config, dtype = sharing.mask_settings(model)
    assert "sso_segments" not in sharing.attention_inputs(config, dtype, batch)  # short rows: the dense mask
    ids = torch.tensor([sso_record(0)[0][0]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    assert len(calls) == model.config.num_hidden_layers and calls[0] == ids.size(1)  # no segments: SDPA itself
    with torch.no_grad():
        torch.testing.assert_close(plain, tiny_family_model("llama", "sdpa")(input_ids=ids).logits, rtol=0, atol=0)
    model.save_pretrained(tmp_path)
    assert segment_attention.IMPLEMENTATION not in (tmp_path / "config.json").read_text()


def test_the_trainer_computes_the_tree_by_segment(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """SSOTrainer switches SDPA models to SDPA by segment; with gradient checkpointing, the policy's forward, its
    recomputation in the backward pass and the reference forward all run by segment (the segments reach the
    attention through TRL's fused head and the checkpointed layers)."""
    args = sso_args(tmp_path, sso_share_across_pairs=True, gradient_checkpointing=True, **TREE)
    trainer = SSOTrainer(**policy_and_reference(tiny_model_dir), args=args, train_dataset=sso_dataset(),
                         processing_class=tokenizer)  # fmt: skip
    for model in (trainer.model, trainer.ref_model):
        assert model.config._attn_implementation == segment_attention.IMPLEMENTATION
    trainer.model.activation_checkpointing_enable()  # as `train()` does
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)]))
    plan = segment_attention.segment_plan(batch["tree_segment_ids"], batch["tree_exit_ids"], sharing.PADDING)
    calls = count_sdpa_calls(monkeypatch)
    monkeypatch.setattr(segment_attention, "MIN_LENGTH", 0)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by `train()` in normal use
    trainer.training_step(trainer.model, batch)
    segments = sum(len(row) for row in plan)
    assert len(calls) == 3 * trainer.model.config.num_hidden_layers * segments


@pytest.mark.parametrize("adapter", ["LoRA", "QLoRA 4-bit"])
def test_lora_numbers_do_not_depend_on_the_layout(tiny_model_dir, tokenizer, tmp_path, adapter):
    qlora = adapter != "LoRA"
    if qlora:
        pytest.importorskip("bitsandbytes")
    shared, unshared = run_both_layouts(tiny_model_dir, tokenizer, tmp_path, lora=True, qlora=qlora)
    assert all("lora" in name for name in shared[2])
    if qlora:  # the 4-bit model's adapter weights and gradients are bf16: compare them to bf16 resolution
        assert all(grad.dtype == torch.bfloat16 for grad in shared[2].values())
    if qlora:
        assert_same_numbers(shared, unshared, grad_rtol=BF16_GRAD_RTOL, logp_rtol=BF16_LOGP_RTOL)
    else:
        assert_same_numbers(shared, unshared)


@pytest.mark.parametrize("placement", ["system", "after_question"])
def test_precomputed_reference_log_probs_do_not_depend_on_the_layout(tiny_model_dir, tokenizer, tmp_path, placement):
    """The reference log-probs precomputed in one shared row a pair, or (the principle after the question) in the
    tree, are those of two rows a pair."""
    columns = []
    for share in (True, False):
        args = sso_args(tmp_path / str(share), sso_share_prompt=share, precompute_ref_log_probs=True,
                        sso_principle_placement=placement)  # fmt: skip
        trainer = SSOTrainer(
            **policy_and_reference(tiny_model_dir), args=args, train_dataset=sso_dataset(), processing_class=tokenizer
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)])
        assert ("tree_input_ids" in batch) is (share and placement == "after_question")
        columns.append(
            {c: trainer.train_dataset[c] for c in trainer.train_dataset.column_names if c.startswith("ref_")}
        )
    assert columns[0].keys() == columns[1].keys() and len(columns[0]) == 6
    for column, values in columns[1].items():
        assert_close_to_scale(torch.tensor(columns[0][column]), torch.tensor(values), LOGP_RTOL, name=column)


def test_lora_numbers_in_the_tree(tiny_model_dir, tokenizer, tmp_path):
    """LoRA with the tree: the numbers of two rows a pair (the reference forward is the policy's with its adapter
    switched off, on the same tree row)."""
    layouts = (THREE_LAYOUTS[0], THREE_LAYOUTS[2])
    tree, two_rows = run_layouts(tiny_model_dir, tokenizer, tmp_path, layouts, lora=True, **TREE)
    assert "tree_input_ids" in tree[-1] and all("lora" in name for name in tree[2])
    assert_same_numbers(tree, two_rows)


def test_a_model_that_cannot_take_the_mask_keeps_two_rows_with_one_warning(tokenizer_dir, tokenizer, tmp_path, caplog):
    from transformers import AutoTokenizer

    # GPT-2 is not a verified family: its numbers in the shared layout are not vouched for
    model_dir = save_tiny_model(
        AutoTokenizer.from_pretrained(tokenizer_dir), tmp_path / "gpt2", "gpt2", n_embd=64, n_layer=2, n_head=4
    )
    with caplog.at_level(logging.WARNING, logger="trl_sso"):
        trainer = SSOTrainer(
            model=model_dir,
            args=sso_args(tmp_path / "out", max_steps=1),
            train_dataset=sso_dataset(),
            processing_class=tokenizer,
        )
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "sso_share_prompt" in r.getMessage()]
    assert len(warnings) == 1 and "'gpt2'" in warnings[0] and "two rows" in warnings[0]
    assert trainer.data_collator.share_prompt is False
    assert "pos_segment_ids" not in trainer.data_collator([trainer.train_dataset[0]])


def test_unsupported_reasons(tiny_model_dir):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert sharing.unsupported_reason(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "'flash_attention_2' cannot take the shared-prompt mask" in sharing.unsupported_reason(model)
    prompt_tuned = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
    )
    assert "virtual tokens" in sharing.unsupported_reason(prompt_tuned)


def test_flex_attention_is_refused_on_a_cpu_before_anything_runs(tiny_model_dir, tokenizer, tmp_path):
    """FlexAttention cannot train on a CPU (no backward), and its compiled CPU kernel is wrong on some batches: the
    trainer says so in one sentence naming the option and the fix, for a model path, a loaded model and a reference
    model, instead of torch's error at the first backward pass."""
    from transformers import AutoModelForCausalLM

    flex = {"attn_implementation": "flex_attention"}
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **flex)
    cases = [
        (tiny_model_dir, None, {"model_init_kwargs": flex}, "The model"),
        (loaded, None, {}, "The model"),
        (AutoModelForCausalLM.from_pretrained(tiny_model_dir), loaded, {}, "The reference model"),
    ]
    for model, ref_model, overrides, role in cases:
        with pytest.raises(ValueError, match=f"{role} uses `attn_implementation='flex_attention'`") as error:
            SSOTrainer(
                model=model,
                ref_model=ref_model,
                args=sso_args(tmp_path / "out", **overrides),
                train_dataset=sso_dataset(),
                processing_class=tokenizer,
            )
        assert "attn_implementation': 'sdpa'" in str(error.value) and not (tmp_path / "out").exists()


def test_the_shape_of_trls_fused_head_that_prepare_scoring_relies_on(tiny_model_dir):
    """`prepare_scoring` finds TRL's fused forward by its code's name and gives it its own `_use_triton`: guard both,
    so that a change in TRL fails here instead of silently scoring every position."""
    import inspect

    from conftest import load_tiny_model
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer.utils import add_fused_lm_head

    source = inspect.getsource(add_fused_lm_head)
    assert "def _fused_forward(" in source and "compact = _use_triton(hidden_states.device)" in source
    model = load_tiny_model(tiny_model_dir)
    add_fused_lm_head(model)
    function = sharing._fused_forward_of(model)
    assert function is not None and {"_use_triton", "_ChunkedLogProbFunction"} <= set(function.__code__.co_names)
    for method in (ChunkedLogProbFunction.forward, ChunkedLogProbFunction.backward):  # tiles: `with_token_tiles`
        assert "TOKEN_CHUNK_SIZE" in method.__code__.co_names


@pytest.mark.parametrize("outputs", [("log_probs",), ("log_probs", "entropy", "log_sum_sq_probs", "is_top1")])
def test_the_head_in_cpu_tiles_computes_what_trls_computes(outputs):
    """TRL's fused head function copied with tiles of 3 tokens (`with_token_tiles`, as the CPU tiles) gives TRL's
    per-token outputs and gradients over 10 tokens (four tiles, the last one short)."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    torch.manual_seed(0)
    weight = torch.randn(40, 8, requires_grad=True)
    hidden = torch.randn(10, 8, requires_grad=True)
    targets = torch.randint(0, 40, (10,))
    results = []
    for function in (ChunkedLogProbFunction, sharing.with_token_tiles(ChunkedLogProbFunction, 3)):
        values = function.apply(hidden, weight, None, targets, 0.7, 16, None, 1.0, outputs)
        differentiable = [v for name, v in zip(("log_probs", "entropy"), values[:2], strict=True) if name in outputs]
        torch.autograd.backward(differentiable, [torch.linspace(-1, 1, 10)] * len(differentiable))
        results.append([v for v in values if v is not None] + [hidden.grad, weight.grad])
        hidden.grad = weight.grad = None
    names = [name for name in outputs if name != "is_top1"] + ["is_top1"] * ("is_top1" in outputs) + ["dh", "dW"]
    for name, ours, trls in zip(names, *results, strict=True):
        if ours.dtype == torch.bool:
            assert torch.equal(ours, trls), name
        else:
            assert_close_to_scale(ours, trls, GRAD_RTOL if name.startswith("d") else LOGP_RTOL, name=name)


def test_prepare_scoring_compacts_on_cpu_once_and_from_two_threads(tiny_model_dir, monkeypatch):
    """Two threads scoring one model at once patch it once and get the numbers of one thread; the LM head projects
    only the labelled positions on a CPU."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import load_tiny_model

    model = load_tiny_model(tiny_model_dir)
    rows = [([1, 2, 3, 4], [[5, 6], [7]]), ([8, 9], [[10, 11, 12]])]
    expected = sharing.completion_logps(model, rows, pad_token_id=0)
    forward = model.forward
    projected = []
    original = sharing.CPU_TILED_LOG_PROBS.apply

    def spy(hidden, *rest):
        projected.append(len(hidden))
        return original(hidden, *rest)

    monkeypatch.setattr(sharing.CPU_TILED_LOG_PROBS, "apply", spy)  # on a CPU, TRL's function in CPU tiles
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: sharing.completion_logps(model, rows, pad_token_id=0), range(4)))
    assert model.forward is forward
    assert all(result == expected for result in results)
    assert set(projected) == {6}  # the 6 completion tokens, not every position of the padded rows

    fresh = [load_tiny_model(tiny_model_dir) for _ in range(2)]
    shared = fresh[0]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(sharing.prepare_scoring, [shared, shared]))
    assert getattr(sharing._fused_forward_of(shared), "_sso_compact", False)
    assert sharing._fused_forward_of(shared).__code__ is sharing._fused_forward_of(model).__code__


def test_the_tree_forwards_fewer_tokens_on_the_packaged_models_records(tokenizer_dir, monkeypatch):
    """`tests/benchmarks/bench_tokens.py` on two records tokenized as the trainer tokenizes them (the packaged model's
    template, the principle after the question): the tree forwards fewer tokens than the shared-prompt layout, which
    forwards fewer than two rows a pair; with the principle in the system message (nothing shared beyond the
    template's first tokens) the tree is within a few tokens of the shared layout."""
    import importlib.util
    from pathlib import Path

    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))  # restored afterwards
    path = Path(__file__).parent / "benchmarks" / "bench_tokens.py"
    spec = importlib.util.spec_from_file_location("bench_tokens", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for seed in range(2):
        after = bench.counts(tokenizer, bench.record(seed, 150, 300), "after_question")
        assert after["tree"] < after["shared"] < after["two_rows"] and after["common"] > 100
        system = bench.counts(tokenizer, bench.record(seed, 150, 300), "system")
        assert system["shared"] - 10 <= system["tree"] <= system["shared"]
