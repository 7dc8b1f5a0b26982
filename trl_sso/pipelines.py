"""The two SSO procedures end to end.

- `iterate` (paper v1, online): for round t = 1..T, generate SSO data with the round-t policy, train it with
  `SSOTrainer` against itself as the frozen reference, and make the result the round-(t+1) policy (with PEFT, the
  adapter merged into its base). Each round writes `round_<t>/data` (the dataset), `round_<t>/train` (the trained model
  or adapter with its card), `round_<t>/policy` (the next policy) and `round_<t>/report.json`.
- `pipeline` (paper v2): sample SSO data from the policy, train a data generator on it with the `generator`
  objective, let the generator write pairs for all queries, then train the original policy on them with plain DPO
  (SSOTrainer with steering and weight off, which is exactly DPO).

Both resume at any point: finished stages are skipped (their final artifact is on disk), generation resumes at batch
granularity and training from its last checkpoint. Artifacts are pushed as each stage finishes when Hub ids are given.
"""

import copy
import dataclasses
import gc
import json
import logging
import os
import shutil
from pathlib import Path

from .generation.arguments import GenerateArguments


logger = logging.getLogger(__name__)

# Generation options that the pipelines set themselves, or take from the training / model arguments.
_SET_BY_PIPELINE = {"model", "model_name", "output_dir", "seed", "iteration", "push_to_hub", "hub_dataset_id", "hub_private", "dtype"}


def _copy_field(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
    return dataclasses.field(default=f.default, metadata=f.metadata)


# The generation options of `trl-sso iterate` / `pipeline`: those of `trl-sso generate`, minus the ones set above.
PipelineGenerationArguments = dataclasses.make_dataclass(
    "PipelineGenerationArguments",
    [(f.name, f.type, _copy_field(f)) for f in dataclasses.fields(GenerateArguments) if f.name not in _SET_BY_PIPELINE],
)


@dataclasses.dataclass
class PipelineArguments:
    """Options of `trl-sso iterate` and `trl-sso pipeline` beyond generation, training and model arguments."""

    rounds: int = dataclasses.field(default=3, metadata={"help": "Online rounds of `iterate` (the paper runs 3)."})
    policy_num_prompts: int | None = dataclasses.field(
        default=None,
        metadata={"help": "`pipeline`: queries the trained generator writes pairs for (default: as many as it was "
                          "trained on)."},
    )
    hub_dataset_id: str | None = dataclasses.field(
        default=None, metadata={"help": "Publish each round's dataset to this repo, as config iteration_<t>."}
    )

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"`rounds` must be at least 1, got {self.rounds}.")


def _generation(gen_args, **settings) -> GenerateArguments:
    return GenerateArguments(**dataclasses.asdict(gen_args), **settings)


def _state():
    from .generation.generator import _process_state

    return _process_state()


def _atomic_save(target: Path, save) -> None:
    """Call `save(folder)` on a temporary folder, then rename it to `target`: `target` is complete or absent."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    save(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _train(model_path, dataset, training_args, model_args, output_dir, callbacks=None, **overrides):
    """Train with SSOTrainer into `output_dir` (resuming from its last checkpoint); returns the final metrics."""
    from .trainer import SSOTrainer
    from .training import build_trainer, last_checkpoint, model_init_kwargs, peft_and_quantization

    args = copy.deepcopy(training_args)
    args.output_dir, args.push_to_hub, args.hub_model_id = str(output_dir), False, None
    for name, value in overrides.items():
        setattr(args, name, value)
    args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    peft_config, quantization_config = peft_and_quantization(model_args)
    trainer = build_trainer(SSOTrainer, model_path, model_args, args=args, train_dataset=dataset,
                            peft_config=peft_config, quantization_config=quantization_config, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=last_checkpoint(args.output_dir))
    trainer.save_model()
    metrics = trainer._final_metrics()
    del trainer
    gc.collect()
    return metrics


def _next_policy(base_path: str, trained_dir: Path, target: Path, model_args) -> None:
    """Save the trained policy as a full checkpoint at `target`: the trained model itself, or with PEFT its adapter
    merged into the full-precision base (also for QLoRA, whose base was quantized only for training)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def save(folder):
        if (trained_dir / "adapter_config.json").exists():
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
            model = PeftModel.from_pretrained(base, str(trained_dir)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(trained_dir), dtype="auto")
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(str(trained_dir)).save_pretrained(folder)

    _atomic_save(target, save)


def _display_name(model_args) -> str:
    """How the starting policy is named in provenance and cards: its Hub id (or path), not a cache folder."""
    from .offline import DEFAULT_MODEL_ID

    return model_args.model_name_or_path or DEFAULT_MODEL_ID


def _resolve_policy(model_args) -> str:
    if model_args.model_name_or_path:
        return model_args.model_name_or_path
    from .offline import default_model_path

    return default_model_path()


def iterate(pipe_args, gen_args, training_args, model_args, callbacks=None) -> list[dict]:
    """Online SSO (see the module docstring). Returns the per-round reports."""
    from .generation import generate
    from .hub import push_dataset, push_folder

    state = _state()
    root = Path(training_args.output_dir)
    policy = _resolve_policy(model_args)
    reports = []
    for t in range(1, pipe_args.rounds + 1):
        round_dir = root / f"round_{t}"
        report_path = round_dir / "report.json"
        if report_path.exists():
            reports.append(json.loads(report_path.read_text()))
            policy = str(round_dir / "policy")
            continue
        name = _display_name(model_args) + (f" (SSO round {t - 1} policy)" if t > 1 else "")
        generation = _generation(gen_args, model=policy, model_name=name, output_dir=str(round_dir / "data"),
                                 iteration=t, seed=training_args.seed + t - 1, dtype=model_args.dtype or "auto")
        dataset, summary = generate(generation)
        gc.collect()
        metrics = _train(policy, dataset, training_args, model_args, round_dir / "train", callbacks)
        if state.is_main_process:
            if not (round_dir / "policy").exists():
                _next_policy(policy, round_dir / "train", round_dir / "policy", model_args)
            if pipe_args.hub_dataset_id:
                push_dataset(round_dir / "data", pipe_args.hub_dataset_id, config_name=f"iteration_{t}")
            if training_args.push_to_hub and training_args.hub_model_id:
                push_folder(round_dir / "train", training_args.hub_model_id, revision=f"iteration_{t}",
                            private=bool(training_args.hub_private_repo), commit_message=f"SSO round {t}")
            report = {
                "round": t,
                "policy": policy,
                "num_prompts": summary["num_prompts"],
                "num_records": summary["num_records"],
                "dropped": summary["dropped"],
                "mean_tokens": summary["mean_tokens"],
                "train": metrics,
            }
            report_path.write_text(json.dumps(report, indent=2))
            lengths = "/".join(f"{summary['mean_tokens'][k]:.1f}" for k in ("chosen", "rejected", "original"))
            logger.warning(
                f"Round {t}/{pipe_args.rounds}: {summary['num_records']} records from {summary['num_prompts']} prompts, "
                f"dropped {sum(summary['dropped'].values())}, mean tokens chosen/rejected/original {lengths}, "
                f"train loss {metrics.get('train_loss', float('nan')):.4f}."
            )
        state.wait_for_everyone()
        reports.append(json.loads(report_path.read_text()))
        policy = str(round_dir / "policy")
    return reports


def pipeline(pipe_args, gen_args, training_args, model_args, callbacks=None) -> dict:
    """The generator pipeline (see the module docstring). Returns its report."""
    from .generation import generate
    from .hub import push_dataset, push_folder

    state = _state()
    root = Path(training_args.output_dir)
    policy = _resolve_policy(model_args)
    report_path = root / "report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    dtype = model_args.dtype or "auto"

    # 1. SSO data sampled from the policy, to train the generator on
    name = _display_name(model_args)
    seed_data, seed_summary = generate(_generation(gen_args, model=policy, model_name=name,
                                                   output_dir=str(root / "generator_data"), iteration=1,
                                                   seed=training_args.seed, dtype=dtype))
    # 2. the generator: the policy trained with the generator objective
    generator_metrics = _train(policy, seed_data, training_args, model_args, root / "generator_train", callbacks,
                               sso_objective="generator",
                               sso_sft_coef=training_args.sso_sft_coef if training_args.sso_objective == "generator" else 0.1)
    if state.is_main_process and not (root / "generator").exists():
        _next_policy(policy, root / "generator_train", root / "generator", model_args)
    state.wait_for_everyone()
    # 3. pairs written by the generator for all queries
    num_prompts = pipe_args.policy_num_prompts or gen_args.num_prompts
    final_args = dataclasses.replace(gen_args, num_prompts=num_prompts)
    pairs, pair_summary = generate(_generation(final_args, model=str(root / "generator"),
                                               model_name=f"{name} (SSO generator)", output_dir=str(root / "policy_data"),
                                               iteration=2, seed=training_args.seed + 1, dtype=dtype))
    # 4. the original policy trained with plain DPO on (x; y+ > y-)
    policy_metrics = _train(policy, pairs.select_columns(["prompt", "chosen", "rejected"]), training_args, model_args,
                            root / "policy_train", callbacks, sso_objective="policy", sso_steer_coef=0.0,
                            sso_use_weight=False, sso_sft_coef=0.0)
    report = {"generator_data": seed_summary["num_records"], "policy_data": pair_summary["num_records"],
              "dropped": pair_summary["dropped"], "mean_tokens": pair_summary["mean_tokens"],
              "generator_train": generator_metrics, "policy_train": policy_metrics}
    if state.is_main_process:
        if pipe_args.hub_dataset_id:
            push_dataset(root / "generator_data", pipe_args.hub_dataset_id, config_name="generator_training")
            push_dataset(root / "policy_data", pipe_args.hub_dataset_id, config_name="generator_pairs")
        if training_args.push_to_hub and training_args.hub_model_id:
            push_folder(root / "policy_train", training_args.hub_model_id, private=bool(training_args.hub_private_repo))
            push_folder(root / "generator_train", f"{training_args.hub_model_id}-generator",
                        private=bool(training_args.hub_private_repo))
        report_path.write_text(json.dumps(report, indent=2))
    state.wait_for_everyone()
    return report
