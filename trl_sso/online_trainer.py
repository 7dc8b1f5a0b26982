"""`OnlineSSOTrainer`: SSO whose triples (y+, y-, y_o) are sampled from the current policy during training, so that
the signal stays on-policy between optimizer steps rather than between the rounds of `trl-sso iterate`.

It is an `SSOTrainer` whose data are prompts; the rest follows TRL's `GRPOTrainer`:
- the training dataloader yields, per process, the prompts of `steps_per_generation` micro-steps at once, each such
  batch repeated `steps_per_generation` times (TRL's `RepeatSampler`);
- `training_step` counts the micro-steps, as GRPO's does; once per generation it samples the triples
  (`trl_sso.generation.generator.sample_triples`: the generator's principles, steering prompts and filters) with the
  policy as it is then, tokenizes and collates them as `SSOTrainer` does, and serves one slice per micro-step to
  `SSOTrainer.training_step`;
- the loss is `SSOTrainer`'s (shared-prompt layout included), the reference the frozen starting policy (a separate
  model, or the adapter switched off with PEFT), or TRL's `sync_ref_model`.

Every generation logs its signal under `online/`: the triples kept and dropped (also per filter), the accuracy on
verifiable features, the on-policyness gaps A(x, y+) - A(x, y_o) and A(x, y-) - A(x, y_o) under the sampling policy,
the mean lengths and the share of responses cut at `max_completion_length`. Sampling is seeded by the generation's
index and the process, so a run resumed from a checkpoint samples what the uninterrupted run sampled.

A micro-step whose triples were all filtered out contributes a zero loss that still reaches every trainable parameter,
so that processes keep their gradients in step. Sampling uses transformers' `generate`, or with `use_vllm` TRL's
`VLLMGeneration` (colocate or server) as GRPO uses it, the policy's weights synced before each generation that follows
an optimizer step.
"""

from collections import Counter

import torch
from datasets import Dataset, IterableDataset
from trl.models import unwrap_model_for_generation
from trl.trainer.grpo_trainer import RepeatSampler

from .generation.generator import generation_metrics, principle_model_sampler, sample_triples
from .generation.samplers import TransformersSampler
from .generation.sources import PrincipleSource
from .generation.vllm import VLLMEngine
from .models import require_chat_template
from .online_config import OnlineSSOConfig
from .principles import known_features
from .signal.onpolicy import gaps_to_original, mean_logps
from .signal.report import accuracy
from .trainer import SSOTrainer


PROMPT_INDEX = "prompt_index"


class OnlineSSOTrainer(SSOTrainer):
    """SSO on triples sampled from the current policy during training; see the module docstring.

    `train_dataset` holds prompts: a `prompt` column of strings or of chat messages (other columns are ignored). After
    each generation, `last_records` holds the SSO records this process kept (canonical records, as the generator
    writes them).

    Example:
    ```python
    from datasets import Dataset
    from trl_sso import OnlineSSOConfig, OnlineSSOTrainer

    prompts = Dataset.from_dict({"prompt": ["Why is the sky blue?", "Name three prime numbers."]})
    args = OnlineSSOConfig("out", features=["verifiable"], per_device_train_batch_size=2, max_steps=10)
    OnlineSSOTrainer(model="HuggingFaceTB/SmolLM2-135M-Instruct", args=args, train_dataset=prompts).train()
    ```
    """

    _tag_names = ["trl", "sso", "online-sso"]
    _name = "Online SSO"

    def __init__(
        self,
        model,
        ref_model=None,
        args: OnlineSSOConfig | None = None,
        train_dataset: Dataset | None = None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if not isinstance(args, OnlineSSOConfig):
            raise TypeError(
                "OnlineSSOTrainer needs its arguments as an `OnlineSSOConfig` (an SSOConfig with the sampling "
                f"settings), got `{type(args).__name__}`."
            )
        if train_dataset is None or isinstance(train_dataset, IterableDataset):
            raise ValueError("OnlineSSOTrainer needs a `train_dataset` of prompts (a map-style `Dataset`).")
        self._buffer, self._counted = None, (None, 0)  # the generation's slices; (global step, micro-steps in it)
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        require_chat_template(self.processing_class, "the policy")
        self.sso_collator, self.data_collator = self.data_collator, list  # the raw prompt rows reach `training_step`
        self.generation_options = args.generation_options()
        self.features = known_features(args.features_file)
        self.principle_sampler = None
        trust_remote_code = bool((args.model_init_kwargs or {}).get("trust_remote_code", False))
        if args.principle_source == "model":  # a separate model writes the guideline pairs
            self.principle_sampler = principle_model_sampler(
                self.generation_options,
                self.accelerator.device,
                args.per_device_train_batch_size,
                trust_remote_code=trust_remote_code,
            )
        self.vllm, self._synced_step = None, None
        if args.use_vllm:  # TRL's `VLLMGeneration` on this trainer's model, as GRPO builds it
            self.vllm = VLLMEngine.for_trainer(self, trust_remote_code)

    def _sampler(self, policy, batch_size: int):
        """What samples this generation: vLLM (the policy's weights synced to it once per optimizer step), or
        transformers' `generate` on the policy."""
        if self.vllm is None:
            return TransformersSampler(policy, self.processing_class, batch_size, self.args.sampling_kwargs())
        if self._synced_step != self.state.global_step:
            self.vllm.sync()
            self._synced_step = self.state.global_step
        return self.vllm.make_sampler(self.processing_class)

    # -----------------------------------------------------------------------------------------------------------------
    # Data: prompts

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name: str):
        if "prompt" not in dataset.column_names:
            raise ValueError(
                f"The {dataset_name} dataset of OnlineSSOTrainer needs a `prompt` column (strings or chat messages); "
                f"it has {dataset.column_names}."
            )
        if len(dataset) == 0:
            raise ValueError(f"The {dataset_name} dataset has no rows: there is nothing to train on.")

        def as_messages(row, index):
            prompt = row["prompt"]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            return {"prompt": messages, PROMPT_INDEX: index}

        columns = [c for c in dataset.column_names if c != "prompt"]
        return dataset.map(as_messages, with_indices=True, remove_columns=columns)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt", PROMPT_INDEX]

    def get_train_dataloader(self):
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self._train_batch_size * self.args.steps_per_generation,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_train_sampler(self, dataset=None):
        """Each generation batch (the prompts of `steps_per_generation` micro-steps on every process) repeated
        `steps_per_generation` times: `training_step` samples for the first and serves the stored triples after."""
        spg = self.args.steps_per_generation
        return RepeatSampler(
            data_source=dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=1,
            batch_size=self._train_batch_size * spg * self.accelerator.num_processes,
            repeat_count=spg,
            shuffle=True,
            seed=self.args.seed,
        )

    # -----------------------------------------------------------------------------------------------------------------
    # Generation

    def _micro_step(self) -> int:
        """This micro-step's index in the whole run, counted in `training_step` from the trainer's own state (so that
        a resumed run continues the count, and with it the generations' seeds)."""
        global_step, seen = self._counted
        seen = seen + 1 if global_step == self.state.global_step else 0
        self._counted = (self.state.global_step, seen)
        return self.state.global_step * self.args.gradient_accumulation_steps + seen

    def _serve(self, rows: list[dict], step: int):
        """The collated slice of micro-step `step`: a generation every `steps_per_generation` micro-steps (and after a
        resume), its slices served in order; None where the filters left nothing."""
        spg = self.args.steps_per_generation
        if step % spg == 0 or self._buffer is None:
            self._buffer = self._generate(rows, generation=step // spg)
        return self._buffer[step % spg]

    def _generate(self, rows: list[dict], generation: int) -> list[dict | None]:
        """Sample the triples of `rows` with the current policy, log their signal, and return one collated slice per
        micro-step (None where the filters left nothing)."""
        args, tokenizer = self.args, self.processing_class
        seed = (args.seed * 100_003 + generation) * self.accelerator.num_processes + self.accelerator.process_index
        padding_side = tokenizer.padding_side
        was_training = self.model.training

        def sample(sampler):
            return sample_triples(
                sampler,
                PrincipleSource.from_options(
                    self.generation_options, self.features, args.seed, sampler, self.principle_sampler
                ),
                tokenizer,
                [row["prompt"] for row in rows],
                [row[PROMPT_INDEX] for row in rows],
                self.generation_options,
                seed=seed,
                provenance={"generator_model": "online", "seed": args.seed, "iteration": generation + 1},
            )

        if self.vllm is not None:
            batch = sample(self._sampler(None, len(rows)))
        else:
            with unwrap_model_for_generation(self.model, self.accelerator) as policy:
                policy.eval()
                batch = sample(self._sampler(policy, len(rows) * 2))
        self.model.train(was_training)
        tokenizer.padding_side = padding_side
        self.last_records = batch.records
        self._log_generation(batch, len(rows))
        examples = [
            self._tokenize_record(record, tokenizer, self.sso_pairs, args.principle_placement)
            for record in batch.records
        ]
        size = args.per_device_train_batch_size
        slices = [examples[k * size : (k + 1) * size] for k in range(args.steps_per_generation)]
        return [self.sso_collator(part) if part else None for part in slices]

    def _log_generation(self, batch, num_prompts: int) -> None:
        """The signal of one generation, as training metrics under `online/` (averaged over the logging steps)."""
        metrics = self._metrics["train"]
        records = batch.records
        overall = accuracy(records, self.features).get("overall") if records else None
        dropped = Counter(reason for reason in batch.reasons if reason is not None)
        for key, value in generation_metrics(num_prompts, records, dropped, overall).items():
            metrics[f"online/{key}"].append(value)
        if not records:
            return
        for side, gap in self._onpolicy_gaps(records).items():
            metrics[f"online/a_gap_{side}"].append(gap)

    def _onpolicy_gaps(self, records) -> dict[str, float]:
        """The mean on-policyness gaps A(x, y+) - A(x, y_o) and A(x, y-) - A(x, y_o) of this generation's records
        under the policy that sampled them (`trl_sso.signal.onpolicy`): how far the pair drifted from what the
        policy says without a principle."""
        with unwrap_model_for_generation(self.model, self.accelerator) as policy, torch.no_grad():
            values, _ = mean_logps(policy, self.processing_class, records, batch_size=len(records))
        return {side: sum(gaps) / len(gaps) for side, gaps in gaps_to_original(values).items()}

    # -----------------------------------------------------------------------------------------------------------------
    # Training

    def training_step(self, model, inputs, num_items_in_batch=None):
        """In the shape of TRL's GRPO trainer: the micro-step counted here, its triples sampled or served from the
        generation's buffer (`_serve`), then `SSOTrainer.training_step` on them. A micro-step whose triples were all
        filtered out trains on with a zero that reaches every trainable parameter."""
        inputs = self._serve(inputs, self._micro_step())
        if inputs is None:
            model.train()
            loss = sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)
            self.accelerator.backward(loss)
            return loss.detach()
        return super().training_step(model, inputs, num_items_in_batch)
