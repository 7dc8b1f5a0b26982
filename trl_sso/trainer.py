"""`SSOTrainer`: TRL's `DPOTrainer` trained on the three SSO preference pairs, and its collator.

Data path: canonical SSO records (`trl_sso.data`) -> `_prepare_dataset` tokenizes the pairs in use
(main `(x; y+ > y-)`, positive steer `(x+; y+ > y-)`, negative steer `(x-; y_o > y+)`) -> `DataCollatorForSSO` lays
each pair out as its own DPO block `[winners ; losers]` -> `_compute_loss` forwards each block once (policy and
reference) and hands the summed log-probabilities to the pure `trl_sso.loss.sso_loss`; it runs no backward pass. On a
single process (`sso_backward_per_pair`), `training_step` follows an explicit plan (`_backward_plan`): a pair is
backpropagated right after its forward pass, so its activations are freed before the next pair runs (the main pair
waits for the last one while the gradient through `W` needs the steering losses), and the loss's own backward pass
then carries the gradient of the pairs not yet backpropagated.

One block per pair rather than one stacked batch: the steering prompts carry the principle and are much longer than
the plain query, so stacking would pad the main pair to their length, and the per-token cost of TRL's fused LM head
grows with the rows of a forward on CPU. Each block is exactly what DPOTrainer forwards for that pair. Pairs that the
objective does not use are neither tokenized, collated nor forwarded.

Where the pairs' prompts begin alike (the principle after the question), the collator lays each example out as one
tree row instead (`sso_share_across_pairs`, `trl_sso.sharing.pack_tree`) and gives each pair a view of it under its own
keys: the policy and the reference forward the tree once for all pairs (`_forward_tree`), each pair reads its branches,
and the step backpropagates the loss once.
"""

import contextlib
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import DistributedType, broadcast_object_list, is_peft_model, tqdm
from accelerate.utils.memory import clear_device_cache
from datasets import Dataset, IterableDataset, concatenate_datasets
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from transformers.utils import logging
from trl import DPOTrainer
from trl.data_utils import extract_prompt
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import get_config_model_id, global_then_local_main_first, pad, use_adapter

from . import data as sso_data
from . import segment_attention, sharing
from .cards import SSO_CITATION, trainer_model_card
from .config import SSOConfig
from .data import PAIRS
from .loss import PairLogps, pair_share, sso_loss
from .tokens import template_kwargs, tokenize_pair


logger = logging.get_logger(__name__)

# The lines of `transformers.Trainer.training_step` that `SSOTrainer.training_step` copies around its per-pair
# forward and backward passes: a test checks that transformers' source still has each of them, and ours too
TRANSFORMERS_LINES = (
    "cp_context, inputs = self._prepare_context_parallel_inputs(model, inputs)",
    "with cp_context():",
    "model.train()",
    'if hasattr(self.optimizer, "train") and callable(self.optimizer.train):',
    "self.optimizer.train()",
    "inputs = self._prepare_inputs(inputs)",
    "with self.compute_loss_context_manager():",
    "del inputs",
    "self.args.torch_empty_cache_steps is not None",
    "and self.state.global_step % self.args.torch_empty_cache_steps == 0",
    "clear_device_cache()",
    "loss = loss / self.current_gradient_accumulation_steps",
    "return loss.detach()",
)


@dataclass
class DataCollatorForSSO(DataCollatorForPreference):
    """
    Data collator for SSO data. Each pair present in the examples becomes its own padded block. By default
    (`share_prompt=False`) a block is laid out winners first and losers second, exactly as TRL's
    `DataCollatorForPreference` lays out a DPO batch:

    - main pair (`prompt_ids`, `chosen_ids`, `rejected_ids`): `input_ids`, `attention_mask`, `completion_mask`,
      rows `[x y+ ; x y-]`;
    - positive steering pair (`pos_*` columns): `pos_input_ids`, `pos_attention_mask`, `pos_completion_mask`,
      rows `[x+ y+ ; x+ y-]`;
    - negative steering pair (`neg_*` columns): `neg_input_ids`, `neg_attention_mask`, `neg_completion_mask`,
      rows `[x- y_o ; x- y+]`.

    With `share_prompt=True`, each example is one row holding the prompt once, then the winner and the loser as
    branches (`trl_sso.sharing`), and the block adds `position_ids`, `segment_ids` (1 for the winner, 2 for the
    loser) and `exit_ids` (the ancestor mask's indices). Each sequence is truncated to `max_length` before padding
    (`truncation_mode` as in DPO). Precomputed `ref_*_logps` columns are stacked into tensors of shape `(batch,)`.

    Examples:
    ```python
    >>> from trl_sso.trainer import DataCollatorForSSO

    >>> example = {
    ...     "prompt_ids": [1], "chosen_ids": [2, 3], "rejected_ids": [4],
    ...     "pos_prompt_ids": [5, 1], "pos_chosen_ids": [2, 3], "pos_rejected_ids": [4],
    ...     "neg_prompt_ids": [6, 1], "neg_chosen_ids": [7], "neg_rejected_ids": [2, 3],
    ... }
    >>> batch = DataCollatorForSSO(pad_token_id=0)([example])
    >>> batch["input_ids"]
    tensor([[1, 2, 3],
            [1, 4, 0]])
    >>> batch["neg_input_ids"]
    tensor([[6, 1, 7, 0],
            [6, 1, 2, 3]])
    >>> batch["neg_completion_mask"]
    tensor([[0, 0, 1, 0],
            [0, 0, 1, 1]])
    >>> shared = DataCollatorForSSO(pad_token_id=0, share_prompt=True)([example])
    >>> shared["neg_input_ids"], shared["neg_position_ids"]
    (tensor([[6, 1, 7, 1, 2, 3]]), tensor([[0, 1, 2, 1, 2, 3]]))
    >>> shared["neg_segment_ids"], shared["neg_completion_mask"]
    (tensor([[0, 1, 1, 2, 2, 2]]), tensor([[0, 0, 1, 0, 1, 1]]))

    ```
    """

    share_prompt: bool = False
    share_across_pairs: bool = False

    def _pad(self, sequences: list[list[int]], value: int) -> torch.Tensor:
        tensors = [torch.tensor(sequence, dtype=torch.long) for sequence in sequences]
        return pad(tensors, padding_value=value, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of)

    def _collate_pair(self, examples: list[dict[str, Any]], pair: str) -> dict[str, torch.Tensor]:
        prompt_key, winner_key, loser_key = PAIRS[pair].token_columns
        prefix = PAIRS[pair].prefix
        if self.share_prompt:
            rows = [
                sharing.pack(e[prompt_key], (e[winner_key], e[loser_key]), self.max_length, self.truncation_mode)
                for e in examples
            ]
            block = sharing.collate(rows, self.pad_token_id, self.pad_to_multiple_of)
            return {f"{prefix}{key}": value for key, value in block.items()}
        input_ids, completion_mask = [], []
        for completion_key in (winner_key, loser_key):  # winners of all examples, then losers
            for example in examples:
                ids, mask = sharing.truncated(
                    example[prompt_key], example[completion_key], self.max_length, self.truncation_mode
                )
                input_ids.append(ids)
                completion_mask.append(mask)
        return {
            f"{prefix}input_ids": self._pad(input_ids, self.pad_token_id),
            f"{prefix}attention_mask": self._pad([[1] * len(ids) for ids in input_ids], 0),
            f"{prefix}completion_mask": self._pad(completion_mask, 0),
        }

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = {}
        pairs = [name for name, pair in PAIRS.items() if pair.token_columns[0] in examples[0]]
        if self._use_tree(examples, pairs):
            output.update(self._collate_tree(examples, pairs))
        else:
            for name in pairs:
                output.update(self._collate_pair(examples, name))
        for pair in PAIRS.values():
            for column in pair.ref_columns:
                if column in examples[0]:
                    output[column] = torch.tensor([example[column] for example in examples])
        return output

    def _use_tree(self, examples: list[dict[str, Any]], pairs: list[str]) -> bool:
        """Whether the batch goes as one tree row per example (`share_across_pairs`): with several pairs whose
        prompts, in every example, begin alike for at least half of the shortest (`trl_sso.sharing.tree_pays`)."""
        if not (self.share_prompt and self.share_across_pairs and len(pairs) > 1):
            return False
        return all(sharing.tree_pays([e[PAIRS[p].token_columns[0]] for p in pairs]) for e in examples)

    def _collate_tree(self, examples: list[dict[str, Any]], pairs: list[str]) -> dict[str, torch.Tensor]:
        """One tree row per example (`trl_sso.sharing.pack_tree`) under the `tree_` keys, the pairs' branches in the
        order of `pairs`; and for each pair a view of it under the pair's own keys: the same rows, with the pair's
        winner and loser as branches 1 and 2 and only their completion tokens in its completion mask."""
        rows = []
        for example in examples:
            groups = []
            for pair in pairs:
                prompt_key, winner_key, loser_key = PAIRS[pair].token_columns
                groups.append((example[prompt_key], (example[winner_key], example[loser_key])))
            rows.append(sharing.pack_tree(groups, self.max_length, self.truncation_mode))
        tree = sharing.collate(rows, self.pad_token_id, self.pad_to_multiple_of)
        output = {f"tree_{key}": value for key, value in tree.items()}
        segments = tree["segment_ids"]
        for index, pair in enumerate(pairs):
            prefix, winner, loser = PAIRS[pair].prefix, 2 * index + 1, 2 * index + 2
            own = torch.where(segments == winner, 1, torch.where(segments == loser, 2, sharing.OTHER))
            output.update({f"{prefix}{key}": tree[key] for key in ("input_ids", "position_ids", "exit_ids")})
            output[f"{prefix}attention_mask"] = tree["attention_mask"]
            output[f"{prefix}segment_ids"] = own
            output[f"{prefix}completion_mask"] = tree["completion_mask"] * (own > 0)
        return output


def _refuse_images(example: dict, dataset_name: str) -> None:
    """Vision-language data is refused before DPOTrainer looks at it, in one line with the reason."""
    if any(key in example for key in ("image", "images")):
        raise ValueError(
            f"The {dataset_name} dataset has an image column, but SSOTrainer trains on text only: vision-language "
            "SSO (image tokens under the principle prompts and in the shared-prompt layout) is not implemented. "
            "Drop the 'image'/'images' column to train on the text alone."
        )


def _refuse_flex_attention_on_cpu(models: dict, args: SSOConfig) -> None:
    """A model with FlexAttention is refused on a CPU before it is loaded or run: torch has no FlexAttention backward
    there, and its compiled CPU kernel returns wrong log-probs on some batches (tests/benchmarks/flex_cpu.py), so
    neither training nor the reference model's scores would hold."""
    if args.device.type != "cpu":
        return
    for role, model in models.items():
        if model is None:
            continue
        if isinstance(model, str):  # loaded by DPOTrainer with `model_init_kwargs`, the reference model too
            implementation = (args.model_init_kwargs or {}).get("attn_implementation")
        else:
            implementation = getattr(sharing.model_config(model), "_attn_implementation", None)
        if implementation == "flex_attention":
            raise ValueError(
                f"The {role} uses `attn_implementation='flex_attention'`, which cannot run SSO on a CPU: torch has no "
                "FlexAttention backward there, and its compiled CPU kernel returns wrong values on some batches. Load "
                "it with `attn_implementation='sdpa'` (for a model path: `SSOConfig(model_init_kwargs="
                "{'attn_implementation': 'sdpa'})`), or train on a GPU."
            )


class SSOTrainer(DPOTrainer):
    """
    Trainer for Self-Steering Optimization ([SSO](https://huggingface.co/papers/2410.17131)), a drop-in replacement
    for TRL's [`~trl.DPOTrainer`]: same constructor, same PEFT / quantization / reference-model handling, trained on
    canonical SSO records (see `trl_sso.data`) with the objective chosen in [`SSOConfig`].

    Example:
    ```python
    from datasets import load_dataset
    from trl_sso import SSOConfig, SSOTrainer

    dataset = load_dataset("json", data_files="sso_round_1.jsonl", split="train")
    trainer = SSOTrainer(
        model="Qwen/Qwen2-0.5B-Instruct",
        args=SSOConfig(output_dir="Qwen2-0.5B-SSO", loss_type="ipo", beta=0.2),
        train_dataset=dataset,
    )
    trainer.train()
    ```

    Args: as [`~trl.DPOTrainer`], with `args` an [`SSOConfig`].
    """

    _tag_names = ["trl", "sso"]
    _name = "SSO"
    _paper = {
        "title": "Aligning Large Language Models via Self-Steering Optimization",
        "id": "2410.17131",
        "citation": SSO_CITATION,
    }

    def __init__(
        self,
        model,
        ref_model=None,
        args: SSOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = SSOConfig(f"{model_name.split('/')[-1]}-SSO")
        elif not isinstance(args, SSOConfig):
            raise TypeError(
                f"SSOTrainer needs its arguments as an `SSOConfig`, got `{type(args).__name__}`. Replace "
                "`DPOConfig(...)` with `SSOConfig(...)` (it accepts every DPOConfig field)."
            )
        for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
            for split, data in dataset.items() if isinstance(dataset, dict) else [(name, dataset)]:
                if isinstance(data, (Dataset, IterableDataset)):
                    _refuse_images(next(iter(data), {}), split)
        _refuse_flex_attention_on_cpu({"model": model, "reference model": ref_model}, args)
        self.sso_pairs = sso_data.pairs_in_use(args.sso_objective, args.sso_steer_coef)
        self._prompt_sharing = None  # settled once the models are loaded (`_shares_prompt`)
        self._tree_outputs = None  # (key, outputs) of the batch's tree forwards, while `_sharing_tree_forwards`
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self._prepare_scoring()
        self._use_sso_collator()
        self._sso_ready = True
        self._pass_ref_model_to_callbacks()

    def add_callback(self, callback):
        super().add_callback(callback)
        if getattr(self, "_sso_ready", False):  # Trainer's `__init__` adds callbacks before the models are set
            self._pass_ref_model_to_callbacks()

    def _pass_ref_model_to_callbacks(self):
        """Callbacks of `trl.experimental` that update the reference model (`BEMACallback(update_ref_model=True)`)
        read it from the event's keyword arguments, which TRL's experimental trainers pass with their
        `CallbackHandlerWithRefModel`. When such a callback is registered, use that handler (its module is then
        imported already, so no new warning shows). TRL's own `sync_ref_model=True` needs nothing of this."""
        handler = self.callback_handler
        experimental = any(type(c).__module__.startswith("trl.experimental") for c in handler.callbacks)
        if not experimental or hasattr(handler, "ref_model"):
            return
        from trl.experimental.bema_for_ref_model.callback import CallbackHandlerWithRefModel

        self.callback_handler = CallbackHandlerWithRefModel(
            handler.callbacks, self.model, self.ref_model, self.processing_class, self.optimizer, self.lr_scheduler
        )

    def _prepare_scoring(self):
        """The fused LM heads that DPOTrainer gave the policy and the reference model, compacted on a CPU too
        (`trl_sso.sharing.prepare_scoring`): decided once per model, before the first forward (the reference
        log-probs are precomputed inside DPOTrainer's `__init__`)."""
        for model in (self.model, self.ref_model):
            if model is not None:
                sharing.prepare_scoring(self.accelerator.unwrap_model(model))

    def _use_sso_collator(self):
        # DPOTrainer builds its default collator (after settling the pad token) inside its `__init__`, before the
        # reference log-probs are precomputed; swap it for the SSO one with the same settings. A user collator stays.
        if type(self.data_collator) is DataCollatorForPreference:
            c = self.data_collator
            self.data_collator = DataCollatorForSSO(
                pad_token_id=c.pad_token_id,
                max_length=c.max_length,
                truncation_mode=c.truncation_mode,
                pad_to_multiple_of=c.pad_to_multiple_of,
                share_prompt=self._shares_prompt(),
                share_across_pairs=self.args.sso_share_across_pairs,
            )

    def _shares_prompt(self) -> bool:
        """Whether the pairs are forwarded in the shared-prompt layout: asked for (`sso_share_prompt`) and possible
        for the policy and the reference model. When it is not possible, warns once with the reason."""
        if self._prompt_sharing is None:
            self._prompt_sharing = self.args.sso_share_prompt
            if self._prompt_sharing and self.compute_metrics is not None:
                logger.info("`compute_metrics` reads DPO's two rows per pair, so the pairs are forwarded that way.")
                self._prompt_sharing = False
            for role, model in (("model", self.model), ("reference model", self.ref_model)):
                if model is None or not self._prompt_sharing:
                    continue
                model = self.accelerator.unwrap_model(model)
                reason = sharing.unsupported_reason(model)
                if reason:
                    name = get_config_model_id(sharing.model_config(model))
                    logger.warning(
                        f"`sso_share_prompt=True`, but the {role} {name!r} cannot forward a prompt once for both of "
                        f"its completions: {reason}. Each pair is forwarded as two rows, as DPO does (same numbers, "
                        "slower)."
                    )
                    self._prompt_sharing = False
            for model in (self.model, self.ref_model) if self._prompt_sharing else ():
                if model is not None:  # SDPA models compute long shared rows by segment
                    segment_attention.use_segment_attention(self.accelerator.unwrap_model(model))
        return self._prompt_sharing

    # -----------------------------------------------------------------------------------------------------------------
    # Data

    def _prepare_dataset(self, dataset, processing_class, args: SSOConfig, dataset_name: str):
        pairs = sso_data.pairs_in_use(args.sso_objective, args.sso_steer_coef)
        first = next(iter(dataset), None)
        if first is None:
            raise ValueError(f"The {dataset_name} dataset has no rows: there is nothing to train on.")
        if all(column in first for pair in pairs for column in PAIRS[pair].token_columns):
            return dataset  # already tokenized (e.g. passed again to `evaluate`)
        _refuse_images(first, dataset_name)
        map_kwargs = {"num_proc": args.dataset_num_proc} if isinstance(dataset, Dataset) else {}
        columns = sso_data.required_columns(args.sso_objective, args.sso_steer_coef)

        with global_then_local_main_first():
            if sso_data.PROMPT not in first and pairs == ("main",):
                # Plain preference data with an implicit prompt, as DPOTrainer accepts it
                dataset = dataset.map(extract_prompt, **map_kwargs)
                first = next(iter(dataset))
            sso_data.check_columns(dataset.column_names or first.keys(), columns)
            sso_data.check_one_format(dataset)

            def tokenize(example, index):
                sso_data.validate_record(example, index, columns)
                placement = sso_data.record_placement(example, args.sso_principle_placement, index)
                return self._tokenize_record(example, processing_class, pairs, placement)

            if isinstance(dataset, Dataset):
                map_kwargs["desc"] = f"Tokenizing SSO pairs of {dataset_name} dataset"
            dataset = dataset.map(tokenize, with_indices=True, **map_kwargs)

            # Drop examples whose prompt alone fills `max_length`: `keep_start` truncation would leave no completion
            if args.max_length is not None and args.truncation_mode == "keep_start":
                prompt_columns = [PAIRS[pair].token_columns[0] for pair in pairs]

                def fits(example):
                    return all(len(example[column]) < args.max_length for column in prompt_columns)

                if isinstance(dataset, Dataset):
                    map_kwargs["desc"] = f"Dropping fully truncated examples from {dataset_name} dataset"
                    before = len(dataset)
                    dataset = dataset.filter(fits, **map_kwargs)
                    if len(dataset) < before:
                        logger.warning(
                            f"Dropped {before - len(dataset)} of {before} examples of the {dataset_name} dataset "
                            f"whose prompt (with its principle) fills `max_length={args.max_length}`. Raise "
                            "`max_length` to keep them."
                        )
                    if len(dataset) == 0:
                        raise ValueError(
                            f"Every example of the {dataset_name} dataset has a prompt of at least `max_length="
                            f"{args.max_length}` tokens, so nothing is left to train on. Raise `max_length`."
                        )
                else:
                    dataset = dataset.filter(fits)
        return dataset

    def _tokenize_record(
        self, example: dict, processing_class, pairs: tuple[str, ...], placement: str | None = None
    ) -> dict[str, list[int]]:
        """Tokenize the pairs in use of one canonical record into their `token_columns`, the principle placed as
        `placement` (`trl_sso.data.record_placement`) says."""
        texts = sso_data.pair_texts(example, pairs, processing_class, placement)
        kwargs = template_kwargs(example)
        output = {}
        for pair in pairs:
            ids = tokenize_pair(processing_class, *texts[pair], kwargs)
            output.update(zip(PAIRS[pair].token_columns, ids, strict=True))
        return output

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                c for p in self.sso_pairs for c in PAIRS[p].token_columns + PAIRS[p].ref_columns
            ]

    # -----------------------------------------------------------------------------------------------------------------
    # Forward passes

    def _forward_pair(self, model, inputs: dict, pair: str, policy: bool = False):
        """One forward of a pair's collated block: the summed completion log-probs of `(winners, losers)` as the
        preference loss compares them (LD-DPO's weighted sums under `ld_alpha`), and the model outputs. The `policy`
        forward of an MoE model also returns its router logits, for the load-balancing loss (`outputs.aux_loss`), as
        DPOTrainer asks for them; the reference forward does not."""
        prefix = PAIRS[pair].prefix
        input_ids, completion_mask = inputs[f"{prefix}input_ids"], inputs[f"{prefix}completion_mask"]
        router = {"output_router_logits": True} if policy and self.aux_loss_enabled else {}
        if "tree_input_ids" in inputs:  # one tree row per example: one forward for every pair, each reads its view
            outputs = self._forward_tree(model, inputs, policy, router)
        elif f"{prefix}segment_ids" in inputs:  # shared-prompt rows
            outputs = self._forward_shared(model, inputs, prefix, router)
        else:
            labels = input_ids.masked_fill(completion_mask == 0, -100)
            outputs = model(
                input_ids=input_ids,
                attention_mask=inputs[f"{prefix}attention_mask"],
                labels=labels,
                use_cache=False,
                fused_lm_head=True,
                **router,
            )
            # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
            seq_len = completion_mask.size(1) - 1
            for field in ("log_probs", "entropy", "is_top1", "log_sum_sq_probs"):
                if getattr(outputs, field, None) is not None:
                    setattr(outputs, field, getattr(outputs, field)[:, -seq_len:])
        log_probs = outputs.log_probs
        if self.ld_alpha is not None:
            log_probs = log_probs * self._ld_token_weights(inputs, pair).to(log_probs.dtype)
        return self._pair_sums(log_probs, inputs, pair), outputs

    @contextlib.contextmanager
    def _sharing_tree_forwards(self):
        """The scope in which the pairs of a batch share its tree forwards (`_forward_tree`): one loss or one set of
        reference log-probs. Outside it, each forward is run afresh, so no output outlives the pass it was made in
        (the same model and row serve as policy and, adapter off, as reference)."""
        self._tree_outputs = []
        try:
            yield
        finally:
            self._tree_outputs = None

    def _forward_tree(self, model, inputs: dict, policy: bool, router: dict):
        """The forward of a batch's tree rows (`tree_*` keys), run once for all its pairs: within
        `_sharing_tree_forwards`, kept for the pairs that follow while it is the same batch, model, kind of forward
        and gradient mode."""
        if self._tree_outputs is None:
            return self._forward_shared(model, inputs, "tree_", router)
        key = (inputs["tree_input_ids"], model, policy, torch.is_grad_enabled())
        for cached, outputs in self._tree_outputs:
            if all(a is b for a, b in zip(cached, key)):
                return outputs
        outputs = self._forward_shared(model, inputs, "tree_", router)
        self._tree_outputs.append((key, outputs))
        return outputs

    def _forward_shared(self, model, inputs: dict, prefix: str, router: dict):
        """The forward of the shared rows of `inputs` under `prefix` (a pair's block, or `tree_`): their mask from the
        segments' exit indices (`trl_sso.sharing`), positions continued from each segment's parent, and labels only
        where a position predicts a completion token of its own segment."""
        input_ids, segments = inputs[f"{prefix}input_ids"], inputs[f"{prefix}segment_ids"]
        positions, completion_mask = inputs[f"{prefix}position_ids"], inputs[f"{prefix}completion_mask"]
        config, dtype = sharing.mask_settings(self.accelerator.unwrap_model(model))
        return model(
            input_ids=input_ids,
            **sharing.attention_inputs(config, dtype, inputs, prefix),
            position_ids=positions,
            shift_labels=sharing.shift_labels(input_ids, sharing.scored_positions(segments, completion_mask)),
            use_cache=False,
            fused_lm_head=True,
            **router,
        )

    @staticmethod
    def _pair_sums(per_token: torch.Tensor, inputs: dict, pair: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums `(winners, losers)` of a per-position output of a pair's forward that is zero where nothing is scored
        (the log-probs): over each branch of a shared row, or over each of DPO's rows."""
        prefix = PAIRS[pair].prefix
        if f"{prefix}segment_ids" in inputs:
            return tuple(sharing.branch_sums(per_token, inputs[f"{prefix}segment_ids"], 2))
        return per_token.sum(dim=1).chunk(2)

    def _ld_token_weights(self, inputs: dict, pair: str) -> torch.Tensor:
        """LD-DPO's weight of each position of a pair's forward (arXiv 2409.06411, as DPOTrainer applies it): 1 on a
        completion's tokens up to the length of the pair's shorter completion, `ld_alpha` beyond it, 0 where nothing
        is scored."""
        scored, winners = self._scored_masks(inputs, pair)
        losers = scored & ~winners
        if f"{PAIRS[pair].prefix}segment_ids" in inputs:
            shared = torch.minimum(winners.sum(dim=1), losers.sum(dim=1))
        else:  # DPO's rows: the winners, then the losers, an example's two rows half a batch apart
            shared = torch.minimum(*scored.sum(dim=1).chunk(2)).repeat(2)
        weights = torch.zeros(winners.shape, device=winners.device)
        for mask in (winners, losers):
            in_shared = mask & (mask.cumsum(dim=1) <= shared.unsqueeze(1))
            weights += in_shared + self.ld_alpha * (mask & ~in_shared)
        return weights

    def _wpo_weight(self, outputs, inputs: dict, pair: str) -> torch.Tensor:
        """WPO's weight of each example (Eq. 2 of arXiv 2406.11827, as DPOTrainer computes it): for the winner and the
        loser, the exponential of the token mean of `log p - log sum p^2` over the completion, multiplied; without
        gradient."""
        with torch.no_grad():
            scored, _ = self._scored_masks(inputs, pair)
            aligned = (outputs.log_probs - outputs.log_sum_sq_probs) * scored
            sums = self._pair_sums(aligned, inputs, pair)
            lengths = self._pair_sums(scored.to(aligned.dtype), inputs, pair)
            return torch.exp(sums[0] / lengths[0].clamp(min=1)) * torch.exp(sums[1] / lengths[1].clamp(min=1))

    @staticmethod
    def _completion_tokens(inputs: dict, pair: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The completion lengths `(winners, losers)` of a pair's collated block, after truncation."""
        prefix = PAIRS[pair].prefix
        completion_mask = inputs[f"{prefix}completion_mask"]
        if f"{prefix}segment_ids" in inputs:
            return tuple(sharing.branch_sums(completion_mask, inputs[f"{prefix}segment_ids"], 2))
        return completion_mask.sum(dim=1).chunk(2)

    @staticmethod
    def _scored_masks(inputs: dict, pair: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the per-token outputs of a pair's forward hold scored completion tokens, and where winners' ones."""
        prefix = PAIRS[pair].prefix
        completion_mask = inputs[f"{prefix}completion_mask"]
        if f"{prefix}segment_ids" in inputs:
            segments = inputs[f"{prefix}segment_ids"]
            scored = sharing.scored_positions(segments, completion_mask)
            return scored, scored & (segments == 1)
        scored = completion_mask[:, 1:].bool()
        winners = scored.clone()
        winners[scored.size(0) // 2 :] = False
        return scored, winners

    def _reference_context(self, model):
        """Where the reference log-probs come from: `model` itself, or with PEFT the adapter-disabled policy."""
        if model is self.model and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        return contextlib.nullcontext()

    def _pair_ref_logps(self, model, inputs: dict, pair: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs `(winners, losers)` of one pair, from `model` without gradients."""
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            self._reference_context(model),
            self.accelerator.autocast(),
        ):
            logps, _ = self._forward_pair(model, inputs, pair)
        return logps

    def compute_ref_log_probs(self, model, inputs) -> dict[str, torch.Tensor]:
        """Reference log-probs of every pair in use in the collated batch `inputs`, keyed by their `ref_columns`."""
        ref_logps = {}
        with self._sharing_tree_forwards():
            for pair in self.sso_pairs:
                ref_logps.update(zip(PAIRS[pair].ref_columns, self._pair_ref_logps(model, inputs, pair), strict=True))
        return ref_logps

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Reference log-probs of every pair in use, computed once over `dataset` and cached per fingerprint."""
        if isinstance(dataset, IterableDataset):
            raise ValueError(
                "`precompute_ref_log_probs=True` is not supported with IterableDataset: it needs a map-style "
                "`Dataset`. Load the dataset without `streaming=True`, or set `precompute_ref_log_probs=False`."
            )
        self._use_sso_collator()
        self._prepare_scoring()
        fingerprint = [Hasher.hash((dataset._fingerprint, self._precompute_model_hash, self.sso_pairs))]
        broadcast_object_list(fingerprint, from_process=0)
        cache_file = dataset._get_cache_file_path(fingerprint[0])
        if os.path.exists(cache_file):
            return concatenate_datasets([dataset, Dataset.from_file(cache_file)], axis=1)

        loader = DataLoader(
            dataset.select_columns([c for p in self.sso_pairs for c in PAIRS[p].token_columns]),
            batch_size=batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        if self.ref_model is None and self.is_deepspeed_enabled:
            # Before `train`, DeepSpeed parameters are not placed yet: reuse one inference engine for all passes
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        columns = defaultdict(list)
        for batch in tqdm(loader, desc=f"Computing reference log probs of the SSO pairs for {name} dataset"):
            ref_logps = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
            for column, values in ref_logps.items():
                columns[column].append(values.float().cpu())
        columns = {column: torch.cat(values).tolist() for column, values in columns.items()}

        if self.accelerator.is_main_process:
            Dataset.from_dict(columns).map(
                new_fingerprint=fingerprint[0], cache_file_name=cache_file, desc="Caching reference log probs"
            )
        self.accelerator.wait_for_everyone()
        return concatenate_datasets([dataset, Dataset.from_file(cache_file)], axis=1)

    # -----------------------------------------------------------------------------------------------------------------
    # Loss

    def _backward_per_pair(self, model) -> bool:
        """Whether a training step backpropagates each pair on its own (`sso_backward_per_pair`): on a single process,
        since DDP, FSDP and DeepSpeed expect one backward pass per step, and with more than one pair."""
        return (
            self.args.sso_backward_per_pair
            and model.training
            and torch.is_grad_enabled()
            and len(self.sso_pairs) > 1
            and self.accelerator.distributed_type == DistributedType.NO
            and self.args.n_gpu <= 1
            and self.args.optim not in ("lomo", "adalomo")  # they take the learning rate in their backward
        )

    def _backward_plan(self) -> tuple[str, ...]:
        """The pairs a per-pair training step backpropagates right after their forward pass, so that their activations
        are freed before the next pair runs. All but two kinds keep their graph for the loss's own backward pass:
        - the last pair forwarded (that backward frees its activations at once);
        - the main pair while the gradient through `W` needs the steering losses (`sso_use_weight` without
          `sso_detach_weight`): `W` is a function of the main pair."""
        main_waits = self.args.sso_use_weight and not self.args.sso_detach_weight
        last = self.sso_pairs[-1]
        return tuple(pair for pair in self.sso_pairs if pair != last and not (pair == "main" and main_waits))

    def training_step(self, model, inputs, num_items_in_batch=None):
        """`Trainer.training_step`, with the pairs backpropagated one by one where `_backward_per_pair` says so: the
        pairs of `_backward_plan` right after their forward pass (their share of the loss, `pair_share`, with `W`
        detached), then the loss with those pairs detached, which carries the rest of the gradient. The gradient is
        that of one backward pass of the loss (the objective is a sum of per-pair shares that meet only through `W`).

        Otherwise the parent's step runs as it is. The per-pair step keeps what the parent does around the forward
        and backward passes (context parallelism, `torch_empty_cache_steps`, the optimizer's train mode, the loss
        scaled under gradient accumulation); those lines are copied, and `TRANSFORMERS_LINES` pins them against
        transformers' own source (tests/test_trainer.py).
        """
        model.train()  # before the choice: it depends on the model's training mode
        if not self._backward_per_pair(model) or "tree_input_ids" in inputs:  # a tree: one forward, one backward
            return super().training_step(model, inputs, num_items_in_batch)
        cp_context, inputs = self._prepare_context_parallel_inputs(model, inputs)
        with cp_context():
            model.train()
            if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
                self.optimizer.train()
            inputs = self._prepare_inputs(inputs)
            at_once = self._backward_plan()
            with self.maybe_activation_offload_context:  # as DPOTrainer's `training_step` (`activation_offloading`)
                with self.compute_loss_context_manager():
                    pairs, outputs = {}, {}
                    for pair in self.sso_pairs:
                        pairs[pair], outputs[pair] = self._pair_logps(model, inputs, pair)
                        if pair in at_once:
                            self._backward_share(pair, pairs, outputs)
                    loss = self._loss_and_metrics(inputs, pairs, outputs)
                del inputs
                if (
                    self.args.torch_empty_cache_steps is not None
                    and self.state.global_step % self.args.torch_empty_cache_steps == 0
                ):
                    clear_device_cache()
                if not self.loss_is_scaled_for_ga:
                    loss = loss / self.current_gradient_accumulation_steps
                self.accelerator.backward(loss)
        return loss.detach()

    def _loss_settings(self) -> dict:
        """The settings of `trl_sso.loss.sso_loss` and `pair_share`, from the config."""
        args = self.args
        return dict(
            objective=args.sso_objective,
            beta=self.beta,
            loss_type=tuple(self.loss_types),
            loss_weights=tuple(self.loss_weights),
            label_smoothing=self.label_smoothing,
            discopop_tau=args.discopop_tau,
            f_divergence_type=self.f_divergence_type,
            f_alpha_divergence_coef=self.f_alpha_divergence_coef,
            steer_coef=args.sso_steer_coef,
            use_weight=args.sso_use_weight,
            weight_alpha=args.sso_weight_alpha,
            detach_weight=args.sso_detach_weight,
            sft_coef=args.sso_sft_coef,
        )

    def _backward_share(self, name: str, pairs: dict[str, PairLogps], outputs: dict) -> None:
        """Backpropagate the share of pair `name` in the loss now (`trl_sso.loss.pair_share`, and the load-balancing
        loss of its forward for an MoE model), scaled as `training_step` scales the loss, and detach the pair: the
        gradient through `W` flows with the main pair, from the loss computed with the pairs already backpropagated
        detached."""
        share = pair_share(name, pairs, **self._loss_settings()).mean()
        if self.aux_loss_enabled:
            share = share + self.router_aux_loss_coef * outputs[name].aux_loss
            outputs[name].aux_loss = outputs[name].aux_loss.detach()
        if not self.loss_is_scaled_for_ga:
            share = share / self.current_gradient_accumulation_steps
        self.accelerator.backward(share)
        pairs[name] = pairs[name].detach()

    def _pair_logps(self, model, inputs: dict, pair: str) -> tuple[PairLogps, Any]:
        """Forward pair `pair` of the collated batch: its log-probabilities under the policy and the reference, and
        the policy's forward output (for the token metrics)."""
        (chosen, rejected), output = self._forward_pair(model, inputs, pair, policy=True)
        plain = self._pair_sums(output.log_probs, inputs, pair) if self.ld_alpha is not None else None
        wpo_weight = self._wpo_weight(output, inputs, pair) if self.use_weighting else None
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = (inputs[column] for column in PAIRS[pair].ref_columns)
        else:
            ref_chosen, ref_rejected = self._pair_ref_logps(self.ref_model or self.model, inputs, pair)
        tokens = self._completion_tokens(inputs, pair)
        return PairLogps(chosen, rejected, ref_chosen, ref_rejected, *tokens, plain, wpo_weight), output

    def _loss_and_metrics(self, inputs: dict, pairs: dict[str, PairLogps], outputs: dict) -> torch.Tensor:
        """`trl_sso.loss.sso_loss`, plus for an MoE model the load-balancing loss of each pair's policy forward, as
        DPOTrainer adds the one of its forward (times `router_aux_loss_coef`; a pair already backpropagated by
        `_backward_share` holds it detached)."""
        loss, terms = sso_loss(pairs.get("main"), pairs.get("pos"), pairs.get("neg"), **self._loss_settings())
        self._record_metrics(inputs, pairs, terms, outputs)
        if self.aux_loss_enabled:
            aux_loss = sum(output.aux_loss for output in outputs.values())
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(aux_loss.detach()).mean().item()
            )
            loss = loss + self.router_aux_loss_coef * aux_loss
        return loss

    def _compute_loss(self, model, inputs, return_outputs):
        """The SSO loss of a collated batch: every pair in use forwarded (the main pair first: `W` depends on it), then
        `trl_sso.loss.sso_loss`. No backward pass happens here; `training_step` plans those.

        With `return_outputs` (evaluation with `compute_metrics`), also the outputs that DPOTrainer returns for its
        pair: a forward of the first pair in use (the main pair; the positive steering pair under `"generator"`) in
        DPO's two rows `[prompt + winner ; prompt + loser]`, with its logits. A trainer given `compute_metrics` keeps
        that layout (`_shares_prompt`)."""
        pairs, outputs = {}, {}
        with self._sharing_tree_forwards():  # a tree's forwards serve every pair
            for pair in self.sso_pairs:
                pairs[pair], outputs[pair] = self._pair_logps(model, inputs, pair)
        loss = self._loss_and_metrics(inputs, pairs, outputs)
        if not return_outputs:
            return loss
        prefix = PAIRS[self.sso_pairs[0]].prefix
        with torch.no_grad():
            ids, mask = inputs[f"{prefix}input_ids"], inputs[f"{prefix}attention_mask"]
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False)
        return loss, logits

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        """DPOTrainer's evaluation step: the loss, and for `compute_metrics` the logits and input ids of the first pair
        in use (its `EvalPrediction`: `predictions` of shape `(2 * batch, length, vocab)`, winners first, and
        `label_ids` the matching `input_ids`)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            if prediction_loss_only:
                return self.compute_loss(model, inputs).detach(), None, None
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        return loss.detach(), outputs.logits, inputs[f"{PAIRS[self.sso_pairs[0]].prefix}input_ids"]

    def _record_metrics(self, inputs: dict, pairs: dict[str, PairLogps], terms: dict, outputs: dict) -> None:
        """Log DPO's metrics for the main pair, the same under `steer_pos/` and `steer_neg/` for the steering pairs,
        the loss terms under `loss/`, the mean weight as `sso/weight`, and token-level metrics over all forwarded
        completions (`entropy`, `mean_token_accuracy` on the winners, `num_tokens`). Two gathers in all."""
        mode = "train" if self.model.training else "eval"
        names, values = [], []
        for pair_name, pair in pairs.items():
            chosen_rewards = self.beta * pair.chosen_logratios.detach()
            rejected_rewards = self.beta * pair.rejected_logratios.detach()
            per_example = {
                "rewards/chosen": chosen_rewards,
                "rewards/rejected": rejected_rewards,
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                "rewards/margins": chosen_rewards - rejected_rewards,
                "logps/chosen": pair.chosen.detach(),
                "logps/rejected": pair.rejected.detach(),
            }
            for name, value in per_example.items():
                names.append(PAIRS[pair_name].metrics + name)
                values.append(value)
        for term, value in terms.items():  # a pair's base loss under its term name, then `sft` and `W`
            names.append(
                f"loss/{PAIRS[term].term}" if term in PAIRS else "sso/weight" if term == "weight" else "loss/sft"
            )
            values.append(value.detach())
        means = self.accelerator.gather_for_metrics(torch.stack(values, dim=1).float()).mean(dim=0)
        for name, mean in zip(names, means.tolist(), strict=True):
            self._metrics[mode][name].append(mean)

        counts = torch.zeros(5, device=means.device)
        for pair, output in outputs.items():
            mask, winners = self._scored_masks(inputs, pair)
            counts[:4] += torch.stack(
                [(output.entropy.detach() * mask).sum(), mask.sum(), (output.is_top1 & winners).sum(), winners.sum()]
            ).float()
        forwarded = ["tree_"] if "tree_attention_mask" in inputs else [PAIRS[pair].prefix for pair in outputs]
        counts[4] = sum(inputs[f"{prefix}attention_mask"].sum() for prefix in forwarded)  # a tree row counts once
        entropy, tokens, correct, winner_tokens, num_tokens = (
            self.accelerator.gather_for_metrics(counts.view(1, -1)).sum(dim=0).tolist()
        )
        self._metrics[mode]["entropy"].append(entropy / tokens if tokens else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append(correct / winner_tokens if winner_tokens else 0.0)
        if mode == "train":
            self._total_train_tokens += int(num_tokens) // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    # -----------------------------------------------------------------------------------------------------------------
    # Model card

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """Write the SSO model card (`trl_sso.cards.trainer_model_card`) to the output directory, in place of TRL's DPO
        card."""
        self._write_model_card(self.args.output_dir, model_name, dataset_name, tags)

    def _write_model_card(self, output_dir, model_name=None, dataset_name=None, tags=None):
        if self.is_world_process_zero():
            os.makedirs(output_dir, exist_ok=True)
            card = trainer_model_card(self, output_dir, model_name, dataset_name, tags)
            card.save(os.path.join(output_dir, "README.md"))

    def save_model(self, output_dir=None, _internal_call=False):
        """Save the model (or adapter) as `Trainer` does, then the SSO model card beside it. (PEFT writes a generic
        card of its own when saving an adapter; checkpoints and `push_to_hub` write the SSO card themselves.)"""
        super().save_model(output_dir, _internal_call)
        if not _internal_call:
            self._write_model_card(output_dir or self.args.output_dir)
