"""The SSO data generator: prompts + a policy -> a dataset of canonical SSO records.

For each batch of queries: principles (`sources`) -> `x+` / `x-` through `trl_sso.data.build_steered_prompt`, the rule
the trainer uses too -> y+, y-, y_o sampled from the policy (`samplers`) -> filters (`filters`) -> the batch's kept
records and drop counts are written to `output_dir/batches/` in one atomic file. Then the batches are merged in
prompt order into `output_dir/data/train-00000-of-00001.parquet`, with `output_dir/summary.json` and a dataset card
(`README.md`) that lists the config: the folder loads with `datasets.load_dataset(output_dir)`, like a Hub repo.

Resumable: a rerun of the same command skips the batches already on disk, and since every batch is seeded by its own
index, the final dataset equals that of an uninterrupted run. Distributed: under `accelerate launch` each process
generates the batches `i` with `i % num_processes == rank`, and the main process merges them, so the result equals a
single-process run with the same seed.
"""

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path

from ..cards import data_provenance, sso_dataset_card
from ..data import (
    GENERATED_DATA_DIR,
    GENERATED_DATA_FILE,
    RESPONSE_COLUMNS,
    build_steered_prompt,
    load_dataset_split,
    make_record,
)
from ..files import clear_leftovers, save_folder_atomic, write_json_atomic
from ..models import load_chat_model
from ..names import DEFAULT_MODEL_ID, public_name
from ..offline import default_model_path
from ..principles import expand_feature_names, known_features
from ..runtime import process_state, wait_for_main
from ..signal.plots import plot_accuracy
from ..signal.report import signal_report
from .arguments import GenerateArguments
from .filters import REASONS, drop_reason, logprob_keep
from .policy import policy_sampler
from .prompts import load_prompts
from .samplers import TransformersSampler
from .sources import PrincipleSource


logger = logging.getLogger(__name__)

BATCH_DIR, SUMMARY_FILE, ACCURACY_PLOT = "batches", "summary.json", "accuracy.png"


class NoRecordsError(RuntimeError):
    """Every generated triple was filtered out."""


def _settings(args: GenerateArguments) -> dict:
    """The settings that make the data: every option whose metadata does not say `affects_data: False` (the output
    folder, the judge, where and how fast vLLM samples, the deprecated names). A rerun with other values must not
    reuse earlier batches."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.metadata.get("affects_data", True)}


def _public_settings(args: GenerateArguments) -> dict:
    """The settings as the summary and the card show them: local paths reduced to their last part (`public_name`)."""
    settings = _settings(args)
    for name in ("model_name_or_path", "prompts", "features_file", "principle_model"):
        if settings.get(name):
            settings[name] = public_name(settings[name])
    return settings


def _settings_key(args: GenerateArguments) -> str:
    return hashlib.sha256(json.dumps(_settings(args), sort_keys=True, default=str).encode()).hexdigest()[:16]


def principle_model_sampler(options, device, batch_size: int, dtype: str = "auto", trust_remote_code: bool = False):
    """The sampler of the model that writes a guideline pair per query (`principle_source="model"`), for the generator
    and online training alike: `principle_model` at `principle_model_revision`, loaded as the policy is (its dtype,
    `trust_remote_code`), sampling under the run's sampling options."""
    model, tokenizer = load_chat_model(
        options.principle_model, dtype, device, options.principle_model_revision, trust_remote_code
    )
    return TransformersSampler(model, tokenizer, batch_size, options.sampling_kwargs())


def generation_metrics(num_prompts: int, records: list[dict], dropped: dict[str, int], overall: dict | None) -> dict:
    """The signal of one generation as training metrics, for `iterate`'s trackers (`generation/`) and online training
    (`online/`) alike: the shares of prompts kept and dropped (per reason too, every reason every time, so that
    averages over generations stay shares), the accuracy of the checked pairs and its ties (`overall`: the report's
    `accuracy(...)["overall"]`), the mean tokens of y+, y- and y_o and the share cut at the token limit."""
    metrics = {
        "kept": len(records) / num_prompts,
        "dropped": sum(dropped.values()) / num_prompts,
        **{f"dropped_{reason}": dropped.get(reason, 0) / num_prompts for reason in REASONS},
    }
    if overall and overall["pairs"]:
        metrics.update({"accuracy": overall["correct"], "accuracy_ties": overall["tie"]})
    for side in RESPONSE_COLUMNS:  # data without token counts (written by a trained generator): none
        counts = [r[f"{side}_tokens"] for r in records if r.get(f"{side}_tokens") is not None]
        if counts:
            metrics[f"tokens_{side}"] = sum(counts) / len(counts)
    if records:
        cut = [not r[f"{side}_finished"] for r in records for side in RESPONSE_COLUMNS if f"{side}_finished" in r]
        if cut:
            metrics["truncated"] = sum(cut) / len(cut)
    return metrics


@dataclasses.dataclass
class SampledBatch:
    """What `sample_triples` returns: the kept records, and for every prompt its drop reason (None: kept) and its
    principles; the tokens generated in all."""

    records: list[dict]
    reasons: list[str | None]
    principles: list
    generated_tokens: int


def sample_triples(
    sampler, source, tokenizer, prompts, indices, options, seed: int, provenance: dict, logprob_scores=None
) -> SampledBatch:
    """One batch of SSO triples from `sampler` (the policy): principles from `source` (`PrincipleSource`), x+ / x-
    built as the trainer rebuilds them (`build_steered_prompt`), y+ and y- sampled with `seed`, y_o with `seed + 1`,
    then the filters of `options` (`GenerationOptions` fields), and the kept records with their `provenance` (record
    fields such as the generator model). Shared by the generator and `OnlineSSOTrainer`."""
    queries = [" ".join(m["content"] for m in p if m["role"] == "user") for p in prompts]
    principles = source.assign(indices, queries, seed)
    where = options.principle_placement
    x_pos = [build_steered_prompt(p, pr.positive_system, tokenizer, where) for p, pr in zip(prompts, principles)]
    x_neg = [build_steered_prompt(p, pr.negative_system, tokenizer, where) for p, pr in zip(prompts, principles)]
    length = options.max_completion_length
    steered = sampler.sample(x_pos + x_neg, options.temperature, options.top_p, length, seed)
    chosen, rejected = steered[: len(prompts)], steered[len(prompts) :]
    original_temperature = (
        options.temperature if options.original_temperature is None else options.original_temperature
    )
    originals = sampler.sample(prompts, original_temperature, options.top_p, length, seed + 1)
    reasons = [
        drop_reason(
            c,
            r,
            o,
            min_chars=options.min_response_chars,
            drop_truncated=options.drop_truncated,
            drop_revealing=options.drop_revealing,
        )
        for c, r, o in zip(chosen, rejected, originals)
    ]
    if logprob_scores is not None:
        alive = [i for i, reason in enumerate(reasons) if reason is None]
        scores = logprob_scores(*([column[i] for i in alive] for column in (prompts, x_pos, x_neg, chosen, rejected)))
        for i, keep in zip(alive, logprob_keep(scores)):
            reasons[i] = None if keep else "logprob"
    records = [
        make_record(
            prompts[k],
            chosen[k].text,
            rejected[k].text,
            originals[k].text,
            pr.positive_system,
            pr.negative_system,
            principle_placement=where,
            features=pr.features,
            principle_source=pr.source,
            principle_fallback=pr.fallback,
            prompt_index=index,
            **provenance,
            chosen_tokens=chosen[k].num_tokens,
            rejected_tokens=rejected[k].num_tokens,
            original_tokens=originals[k].num_tokens,
            chosen_finished=chosen[k].finished,
            rejected_finished=rejected[k].finished,
            original_finished=originals[k].finished,
        )
        for k, (index, pr) in enumerate(zip(indices, principles))
        if reasons[k] is None
    ]
    tokens = sum(c.num_tokens for c in chosen + rejected + originals)
    return SampledBatch(records, reasons, principles, tokens)


def generation_worker(args: GenerateArguments, state) -> tuple[int, int, bool]:
    """`(worker, workers, writes)` of this process: the processes that share one vLLM engine generate the same batches
    together (one worker, whose first process writes them; `trl_sso.generation.vllm`): those of a colocated
    tensor-parallel group, or all of them with a server. Otherwise each process is a worker.

    >>> from types import SimpleNamespace as N
    >>> args = N(use_vllm=True, vllm_mode="colocate", vllm_tensor_parallel_size=2)
    >>> [generation_worker(args, N(process_index=i, num_processes=4)) for i in range(4)]
    [(0, 2, True), (0, 2, False), (1, 2, True), (1, 2, False)]
    >>> args = N(use_vllm=True, vllm_mode="server", vllm_tensor_parallel_size=1)
    >>> [generation_worker(args, N(process_index=i, num_processes=2)) for i in range(2)]
    [(0, 1, True), (0, 1, False)]
    """
    size = 1
    if args.use_vllm:
        size = args.vllm_tensor_parallel_size if args.vllm_mode == "colocate" else state.num_processes
    return state.process_index // size, max(state.num_processes // size, 1), state.process_index % size == 0


class SSOGenerator:
    """Generates SSO records from a prompt set with a policy; see the module docstring."""

    def __init__(self, args: GenerateArguments, sampler=None, tokenizer=None, principle_sampler=None, engine=None):
        self.args, self.state = args, process_state()
        self.engine, self.owns_engine = engine, False
        self.features = known_features(args.features_file)
        if args.features:  # unknown names fail before any model loads
            expand_feature_names(args.features, self.features)
        self.prompts = load_prompts(args.prompts, args.prompt_column, args.prompt_split, args.num_prompts)
        if sampler is None:
            model_name = args.model_name_or_path or default_model_path()
            sampler, tokenizer = policy_sampler(
                args,
                model_name,
                args.batch_size,
                engine,
                dtype=args.dtype,
                revision=args.model_revision,
                trust_remote_code=args.trust_remote_code,
            )
            if args.use_vllm and engine is None:  # this run's own engine, released when it ends
                self.engine, self.owns_engine = sampler.engine, True
        self.sampler, self.tokenizer = sampler, tokenizer
        if args.principle_source == "model" and principle_sampler is None:
            principle_sampler = principle_model_sampler(
                args, self.state.device, args.batch_size, args.dtype, args.trust_remote_code
            )
        self.source = PrincipleSource.from_options(args, self.features, args.seed, sampler, principle_sampler)
        self.output_dir = Path(args.output_dir)
        self.batches = self._plan_batches()
        self.generator_name = args.model_name or (
            public_name(args.model_name_or_path) if args.model_name_or_path else DEFAULT_MODEL_ID
        )

    def _plan_batches(self) -> list[list[int]]:
        """Prompt indices in batches of `batch_size`, grouped by prompt length so that each batch carries little
        padding. The plan depends only on the prompts, so every process computes the same one."""
        lengths = [sum(len(m["content"]) for m in p) for p in self.prompts]
        order = sorted(range(len(self.prompts)), key=lambda i: (lengths[i], i))
        size = self.args.batch_size
        return [order[start : start + size] for start in range(0, len(order), size)]

    # -----------------------------------------------------------------------------------------------------------------

    def _batch_path(self, batch_index: int) -> Path:
        return self.output_dir / BATCH_DIR / f"batch-{batch_index:06d}.json"

    def _generate_batch(self, batch_index: int, indices: list[int]) -> dict:
        args = self.args
        scores = self._logprob_scores if args.logprob_filter else None
        batch = sample_triples(
            self.sampler,
            self.source,
            self.tokenizer,
            [self.prompts[i] for i in indices],
            indices,
            args,
            seed=args.seed * 100_003 + batch_index,
            provenance={"generator_model": self.generator_name, "seed": args.seed, "iteration": args.iteration},
            logprob_scores=scores,
        )
        return {
            "settings": _settings_key(args),
            "records": batch.records,
            "dropped": dict(Counter(r for r in batch.reasons if r is not None)),
            "fallbacks": sum(p.fallback for p in batch.principles),
            "features": dict(Counter(name for p in batch.principles for name in p.features)),
            "prompts": len(indices),
            "generated_tokens": batch.generated_tokens,
        }

    def _logprob_scores(self, plain, pos, neg, chosen, rejected) -> list[dict[str, float]]:
        n = len(plain)
        if n == 0:
            return []
        # each prompt once, for both responses of its record
        pairs = [[c.text, r.text] for c, r in zip(chosen, rejected, strict=True)]
        values = self.sampler.mean_logps(pos + plain + neg, pairs * 3)
        keys = (("p_chosen", "p_rejected"), ("o_chosen", "o_rejected"), ("n_chosen", "n_rejected"))  # x+, x, x-
        return [
            {key: value for j, names in enumerate(keys) for key, value in zip(names, values[j * n + i])}
            for i in range(n)
        ]

    # -----------------------------------------------------------------------------------------------------------------

    def run(self):
        """Generate every missing batch of this process, then (main process) merge them into the dataset."""
        from tqdm.auto import tqdm  # lazy: `trl-sso generate --help` imports this module

        batch_dir = self.output_dir / BATCH_DIR
        if self.state.is_main_process:
            batch_dir.mkdir(parents=True, exist_ok=True)
            clear_leftovers(batch_dir)  # half-written batches of a killed run
        self.state.wait_for_everyone()
        key = _settings_key(self.args)
        worker, workers, writes = generation_worker(self.args, self.state)
        mine = [b for b in range(len(self.batches)) if b % workers == worker]
        todo = [b for b in mine if not self._batch_done(b, key)]
        if len(todo) < len(mine) and self.state.is_main_process:
            logger.info(f"Resuming: {len(mine) - len(todo)} of {len(mine)} batches are already in {batch_dir}.")
        start, prompts_done, tokens = time.perf_counter(), 0, 0
        bar = tqdm(
            total=sum(len(self.batches[b]) for b in todo),
            unit="prompt",
            desc="Generating SSO triples",
            disable=not self.state.is_local_main_process,
        )
        with bar:  # closed on an error too, so that the error's message starts a line of its own
            for b in todo:
                result = self._generate_batch(b, self.batches[b])
                if writes:
                    write_json_atomic(self._batch_path(b), result)
                prompts_done += result["prompts"]
                tokens += result["generated_tokens"]
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.update(result["prompts"])
                bar.set_postfix(prompts_s=f"{prompts_done / elapsed:.2f}", tokens_s=f"{tokens / elapsed:.1f}")
        if self.owns_engine:
            self.engine.release()
        summary_path = self.output_dir / SUMMARY_FILE
        if self.state.is_main_process:
            summary_path.unlink(missing_ok=True)  # written last by the merge: what the other processes wait for
        self.state.wait_for_everyone()
        result = self._merge(key) if self.state.is_main_process else None
        # every process may go on to use the merged dataset; the merge (and a judge) can outlast a barrier's timeout
        wait_for_main(self.state, summary_path)
        if result is None:
            dataset = load_dataset_split(str(self.output_dir))
            result = dataset, json.loads((self.output_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        return result

    def _batch_done(self, batch_index: int, key: str) -> bool:
        path = self._batch_path(batch_index)
        if not path.exists():
            return False
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))["settings"]
        except (json.JSONDecodeError, KeyError, OSError):
            return False  # unreadable: regenerate it
        if settings != key:
            raise ValueError(
                f"{self.output_dir} holds batches generated with other settings. Use a new `--output_dir`, or delete "
                f"{self.output_dir / BATCH_DIR} to start over."
            )
        return True

    def _merge(self, key: str):
        import datasets

        results = []
        for b in range(len(self.batches)):
            if not self._batch_done(b, key):
                raise RuntimeError(f"Batch {b} is missing from {self.output_dir / BATCH_DIR}; rerun to complete it.")
            results.append(json.loads(self._batch_path(b).read_text(encoding="utf-8")))
        records = sorted((r for result in results for r in result["records"]), key=lambda r: r["prompt_index"])
        dropped = Counter()
        features = Counter()
        for result in results:
            dropped.update(result["dropped"])
            features.update(result["features"])
        if not records:
            raise NoRecordsError(
                f"Every generated triple was filtered out ({dict(dropped)}). Raise `max_completion_length`, relax the "
                "filters or use a stronger model."
            )
        dataset = datasets.Dataset.from_list(records)
        save_folder_atomic(
            self.output_dir / GENERATED_DATA_DIR, lambda folder: dataset.to_parquet(str(folder / GENERATED_DATA_FILE))
        )
        n = len(records)
        summary = {
            "num_prompts": sum(r["prompts"] for r in results),
            "empty_prompts_dropped": len(self.prompts.empty_rows),
            "num_records": n,
            "dropped": {reason: dropped.get(reason, 0) for reason in REASONS},
            "principle_fallbacks": sum(r["fallbacks"] for r in results),
            "feature_counts": dict(sorted(features.items())),
            "generated_tokens": sum(r["generated_tokens"] for r in results),
            "mean_tokens": {side: sum(r[f"{side}_tokens"] for r in records) / n for side in RESPONSE_COLUMNS},
            "generator_model": records[0]["generator_model"],
            "settings": _public_settings(self.args),
            "signal": signal_report(records, self.features),
            "provenance": data_provenance(self.args.model_name_or_path, self.args.prompts),
        }
        if self.args.judge:
            from ..signal.judge import judge_report, make_judge

            args = self.args
            judge = make_judge(args.judge, args.judge_model, batch_size=args.batch_size, timeout=args.judge_timeout)
            summary["signal"]["judge"] = judge_report(judge, records, self.features)
        write_json_atomic(self.output_dir / SUMMARY_FILE, summary, indent=2)

        plot = plot_accuracy(summary["signal"], self.output_dir / ACCURACY_PLOT)
        # The card travels with the data (a push renders it anew for the repo). It lists no `configs`: datasets 5.2
        # caches local folders with listed configs by folder name, so two runs' `data` folders would share a cache
        config = f"iteration_{self.args.iteration}"
        card = sso_dataset_card(dataset, summary, self.args.output_dir, config, {}, plot and ACCURACY_PLOT, local=True)
        card.save(str(self.output_dir / "README.md"))
        return dataset, summary


def generate(args: GenerateArguments, **components):
    """Run the generator; returns `(dataset, summary)` on every process once the merged dataset is on disk. Publishing
    is the caller's (`trl_sso.hub.push_dataset`, as `trl-sso generate --push_to_hub` does)."""
    return SSOGenerator(args, **components).run()
