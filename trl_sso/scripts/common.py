"""What the commands share, the one module of helpers under `trl_sso/scripts/` (no script imports another):

1. training: model loading options, PEFT / quantization with clear errors, and the build-train-save sequence that
   resumes from the last checkpoint of the output folder (`train`, `reward`, `online`, and the stages below);
2. the stages that `iterate` and `pipeline` are made of: the starting policy, a generation stage, a training stage,
   the next policy saved as a full checkpoint, and the signal of a round. Each stage's final artifact is written
   atomically, so a rerun skips the stages that finished.
"""

import copy
import dataclasses
import gc
import importlib.util
import json
import logging
import math
import os
import re
from pathlib import Path

from ..cards import final_metrics, model_license
from ..files import removed_on_failure, save_folder_atomic, write_json_atomic
from ..generation import generate
from ..generation.arguments import GenerateArguments, GenerationOptions
from ..generation.generator import generation_metrics
from ..generation.prompts import load_prompts
from ..generation.samplers import TransformersSampler
from ..generation.vllm import VLLMEngine
from ..hub import point_adapter_at, push_folder
from ..names import DEFAULT_MODEL_ID, hub_id, public_name
from ..offline import default_model_path
from ..signal.heldout import evaluation_features, score_answers
from ..signal.onpolicy import load_policy, mean_logps, onpolicy_report


logger = logging.getLogger(__name__)


def require_model(model_args, command: str) -> None:
    """`train` and `reward` fine-tune the model the user names, as TRL's scripts do: no default model."""
    if not model_args.model_name_or_path:
        raise ValueError(
            f"`--model_name_or_path` is required: the model `trl-sso {command}` fine-tunes (a Hub id or a local "
            "folder), e.g. `--model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct`."
        )


def model_init_kwargs(model_args, training_args) -> dict:
    """The `from_pretrained` options of TRL's `ModelConfig` and `--trust_remote_code`, plus any `model_init_kwargs`."""
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    kwargs.update(getattr(training_args, "model_init_kwargs", None) or {})
    return kwargs


def peft_and_quantization(model_args):
    """`(peft_config, quantization_config)` from the `--use_peft` / `--load_in_4bit` options, with clear errors for
    impossible combinations."""
    from trl import get_peft_config, get_quantization_config

    if model_args.load_in_4bit or model_args.load_in_8bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                "`--load_in_4bit` / `--load_in_8bit` need bitsandbytes, which is not installed. Install it with "
                "`pip install trl-sso[qlora]`, or drop the option to train in full precision."
            )
        if not model_args.use_peft:
            raise ValueError(
                "A quantized model cannot be fine-tuned directly: add `--use_peft` (QLoRA trains a LoRA adapter on "
                "the frozen 4-bit model), or drop `--load_in_4bit`."
            )
    return get_peft_config(model_args), get_quantization_config(model_args)


def _read_state(folder) -> dict | None:
    """The `trainer_state.json` of `folder`, or `None` when it is missing or cut short."""
    try:
        with open(os.path.join(str(folder), "trainer_state.json")) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-*` folder in `output_dir` (its `trainer_state.json`, written last, reads
    back), or `None`. A checkpoint cut short by a kill while saving is passed over with a warning."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        if _read_state(os.path.join(output_dir, name)) is None:
            logger.warning(f"{name} in {output_dir} is incomplete (killed while saving?): passed over.")
            continue
        return os.path.join(output_dir, name)
    return None


def whole_run_train_loss(log_history: list[dict], resumed_at: int, resumed_loss: float, final_step: int) -> float:
    """The mean training loss over every step of a run resumed at step `resumed_at`: the losses logged before the
    checkpoint (from its restored log history, each weighted by the steps it covers) and `resumed_loss`, the mean
    transformers reports over the steps after it. Equals the `train_loss` of the same run uninterrupted when the
    checkpoint falls on a logging step."""
    total, covered, previous = 0.0, 0, 0
    for entry in log_history:
        step = entry.get("step", 0)
        if "loss" in entry and previous < step <= resumed_at:
            total += entry["loss"] * (step - previous)
            covered, previous = covered + step - previous, step
    resumed_steps = final_step - resumed_at
    return (total + resumed_loss * resumed_steps) / max(covered + resumed_steps, 1)


def derive(arguments, **changes):
    """A copy of validated `arguments` with `changes`, leaving the original as it was checked: an `SSOConfig` is
    checked again (`SSOConfig.for_stage`); other arguments take values that need no check."""
    if hasattr(arguments, "for_stage"):
        return arguments.for_stage(**changes)
    derived = copy.deepcopy(arguments)
    for name, value in changes.items():
        setattr(derived, name, value)
    return derived


def build_trainer(trainer_class, model_name: str, model_args, training_args, **kwargs):
    """`trainer_class(model_name, args=...)`: `training_args` with the model options of `model_args` (PEFT,
    quantization, `from_pretrained` options) derived into a copy; PEFT's error about unmatched target modules becomes
    one naming the fix."""
    training_args = derive(training_args, model_init_kwargs=model_init_kwargs(model_args, training_args))
    peft_config, quantization_config = peft_and_quantization(model_args)
    try:
        return trainer_class(
            model_name, args=training_args, peft_config=peft_config, quantization_config=quantization_config, **kwargs
        )
    except ValueError as error:
        if "not found in the base model" in str(error) or "Target modules" in str(error):
            raise ValueError(
                f"`--lora_target_modules {' '.join(model_args.lora_target_modules or [])}` match no module of "
                f"{model_name}. Name its linear layers (e.g. `q_proj v_proj` for Llama-style models) or use "
                "`--lora_target_modules all-linear`."
            ) from error
        raise


def ignore_bias_buffers(trainer) -> None:
    """`--ignore_bias_buffers`, as TRL's scripts apply it: DDP skips the boolean buffers (attention masks) when it
    synchronises buffers, which fails for them on some models."""
    import torch

    trainer.model._ddp_params_and_buffers_to_ignore = [
        name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
    ]


def _report_whole_run(trainer, output, resume: str):
    """After a resumed training: `train_loss` of the whole run (see `whole_run_train_loss`) in the returned metrics
    and the final log entry, which the reports and cards read; transformers' figure covers the resumed steps only."""
    state = _read_state(resume)
    if state is None:  # `--resume_from_checkpoint true`: transformers found the checkpoint itself
        checkpoint = last_checkpoint(trainer.args.output_dir)
        state = _read_state(checkpoint) if checkpoint else None
    if state is None:
        return output
    resumed_at = state["global_step"]
    loss = whole_run_train_loss(trainer.state.log_history, resumed_at, output.training_loss, output.global_step)
    final = trainer.state.log_history[-1]
    if "train_loss" in final:
        final["train_loss"] = loss
    return output._replace(training_loss=loss, metrics={**output.metrics, "train_loss": loss})


def _reached_the_end(state: dict | None, training_args) -> bool:
    """Whether a saved trainer state is at the last step this run would train to: `--max_steps` when set, else the
    total the saved run computed for the same number of epochs."""
    if not state:
        return False
    if training_args.max_steps > 0:
        return state["global_step"] >= training_args.max_steps
    return state["global_step"] >= state["max_steps"] > 0 and state.get("num_train_epochs") == math.ceil(
        training_args.num_train_epochs
    )


def finished_training(training_args) -> tuple[str, str] | None:
    """`(kind, folder)` when the training of `training_args` already reached its last step in an earlier run, else
    `None`. `("final", output_dir)`: the final model and its state were saved (`trainer_state.json` is written after
    the model); `("checkpoint", folder)`: the run was stopped between its last step and the final save, and its last
    checkpoint holds the end. Resuming either would train past the end (transformers always takes one more step)."""
    output_dir = training_args.output_dir
    if _reached_the_end(_read_state(output_dir), training_args):
        return "final", output_dir
    resume = training_args.resume_from_checkpoint
    checkpoint = last_checkpoint(output_dir) if resume in (None, True, "true", "True") else resume
    if checkpoint and _reached_the_end(_read_state(checkpoint), training_args):
        return "checkpoint", checkpoint
    return None


def _load_trained_weights(trainer, folder: str) -> None:
    """Load the model or adapter saved in `folder` into the trainer's (unwrapped) model."""
    from accelerate.utils import is_peft_model

    if is_peft_model(trainer.model):
        trainer.model.load_adapter(folder, trainer.model.active_adapter, is_trainable=True)
    else:
        trainer._load_from_checkpoint(folder)


def _reuse_finished(trainer, kind: str, folder: str):
    """Take up a training that reached its end (`finished_training`) without training a step: the trained weights
    and the state of `folder`; returns the `TrainOutput` the training returned (from the final log entry, or, for a
    checkpoint, from the losses it logged)."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    sharded = trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
    if sharded and kind == "checkpoint":
        raise ValueError(
            f"The training in {trainer.args.output_dir} reached its last step ({folder}), but the run stopped before "
            "it saved the final model, and a DeepSpeed or FSDP checkpoint cannot be turned into it without training. "
            f"Delete {folder} to train the last step again."
        )
    if not sharded:  # sharded runs read nothing back from the model: their final model is on disk
        _load_trained_weights(trainer, folder)
    trainer.state = TrainerState.load_from_json(os.path.join(folder, "trainer_state.json"))
    history, step = trainer.state.log_history, trainer.state.global_step
    if kind == "checkpoint":  # the entry transformers logs at the end of training, from the logged losses
        history.append(
            {"train_loss": whole_run_train_loss(history, step, 0.0, step), "epoch": trainer.state.epoch, "step": step}
        )
    metrics = {key: value for key, value in history[-1].items() if key != "step"} if history else {}
    trainer.accelerator.print(
        f"The training in {trainer.args.output_dir} already reached step {step} of {step} ({folder}): reused as "
        "it is, nothing is trained."
    )
    return TrainOutput(step, metrics.get("train_loss", float("nan")), metrics)


RUN_SETTINGS_FILE = "sso_run_settings.json"
# Training arguments that shape what is logged, saved, published or evaluated, or how far the run goes (`max_steps`,
# `num_train_epochs`: the end a finished run is checked against), not the weights it trains; every other setting of
# the training, the model options and the data must match for a run to be reused or resumed
_BOOKKEEPING = re.compile(
    r"^(output_dir|overwrite_output_dir|logging_.*|log_.*|save_.*|push_to_hub|hub_.*|report_to|run_name|project|"
    r"trackio_.*|disable_tqdm|resume_from_checkpoint|eval_.*|per_device_eval_batch_size|do_eval|do_predict|"
    r"dataloader_.*|max_steps|num_train_epochs|include_.*|prediction_loss_only|skip_memory_metrics|"
    r"model_init_kwargs|torch_empty_cache_steps|local_rank|ddp_timeout)$"
)


def run_settings(model_name: str, model_args, training_args, data) -> dict:
    """The settings that change what a training run trains: the model and its options, the data (`data`: the
    sources, as the command names them) and the training arguments but their bookkeeping (`_BOOKKEEPING`). JSON
    values, with no Hub token."""
    training = {
        f.name: getattr(training_args, f.name)
        for f in dataclasses.fields(training_args)
        if not _BOOKKEEPING.match(f.name) and f.init
    }
    model = {f.name: getattr(model_args, f.name) for f in dataclasses.fields(model_args) if f.init}
    settings = {"model": model_name, "data": data, "model_args": model, "training_args": training}
    return json.loads(json.dumps(settings, default=str))


def check_same_run(output_dir: str, settings: dict) -> None:
    """Refuse to reuse or resume the run in `output_dir` when it was made with other settings (`run_settings`), in one
    line naming each setting that differs and its two values. A folder from before this check is taken as it is."""
    path = os.path.join(output_dir, RUN_SETTINGS_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    differ = []
    for group in settings:
        old, new = saved.get(group), settings[group]
        if isinstance(new, dict) and isinstance(old, dict):
            names = sorted(set(old) | set(new))
            differ += [
                f"{name} {old.get(name)!r} -> {new.get(name)!r}" for name in names if old.get(name) != new.get(name)
            ]
        elif old != new:
            differ.append(f"{group} {old!r} -> {new!r}")
    if differ:
        shown = "; ".join(differ[:8]) + (f"; and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ValueError(
            f"{output_dir} holds a run made with other settings ({shown}). Its results would not be those of these "
            "settings: choose another `--output_dir`, or run again with the settings it was made with."
        )


def train_and_save(trainer_class, model_name: str, model_args, training_args, before_train=None, data=None, **kwargs):
    """Build the trainer (`build_trainer`), call `before_train(trainer)` if given, train, resuming from
    `--resume_from_checkpoint` or the last checkpoint of the output folder, and save the model (or adapter; its base
    named by Hub id when it has one, see `trl_sso.hub.point_adapter_at`) and then the trainer state, last.

    A training that already reached its end (`finished_training`) is reused, not resumed: nothing is trained, the
    returned output and state are those of the run that finished, and `trainer.sso_reused_training` is `True` (the
    model in memory holds the trained weights, except under DeepSpeed or FSDP, whose final model stays on disk).
    A folder that holds a run made with other settings (`run_settings`, `data` naming the data sources) is refused
    before any model loads (`check_same_run`), whether the run finished or is to be resumed.

    Returns `(trainer, train_output)`."""
    from accelerate import PartialState

    settings = run_settings(model_name, model_args, training_args, data)
    finished = finished_training(training_args)
    if finished or last_checkpoint(training_args.output_dir):
        check_same_run(training_args.output_dir, settings)
    if PartialState().is_main_process:
        write_json_atomic(os.path.join(training_args.output_dir, RUN_SETTINGS_FILE), settings, indent=2)
    trainer = build_trainer(trainer_class, model_name, model_args, training_args, **kwargs)
    trainer.sso_reused_training = finished is not None
    if finished and finished[0] == "final":
        return trainer, _reuse_finished(trainer, *finished)
    if finished:
        output = _reuse_finished(trainer, *finished)
    else:
        if before_train is not None:
            before_train(trainer)
        resume = training_args.resume_from_checkpoint or last_checkpoint(training_args.output_dir)
        if resume:
            trainer.accelerator.print(f"Resuming from {resume}.")
        output = trainer.train(resume_from_checkpoint=resume)
        if trainer.state.global_step == 0:  # an untrained model is no result: say so, and save nothing
            raise ValueError(
                f"The training ended without a single optimizer step (the data gave the trainer no batch: "
                f"{len(trainer.train_dataset) if hasattr(trainer.train_dataset, '__len__') else 'a stream of'} "
                "examples), so nothing was saved. Add examples, or lower the batch size, "
                "`gradient_accumulation_steps` or `steps_per_generation`."
            )
        if resume and trainer.state.log_history:
            output = _report_whole_run(trainer, output, resume)

    with removed_on_failure(training_args.output_dir):  # a failed save (a full disk) leaves no partial model
        trainer.save_model()
        if trainer.accelerator.is_main_process:  # an adapter names its base by Hub id, never by a local folder
            point_adapter_at(training_args.output_dir, hub_id(model_name), model_args.model_revision)
        trainer.save_state()  # last: its presence says the final model is saved (`finished_training`)
    trainer.accelerator.wait_for_everyone()
    return trainer, output


def finish_training(trainer, output, training_args, model_args, sources) -> None:
    """After a training command: the metrics saved, the card naming the Hub datasets among `sources`, publishing with
    `--push_to_hub`, and the trainer ended (trackers, process group) as TRL's scripts end."""
    from accelerate.utils import is_peft_model

    trainer.log_metrics("train", output.metrics)
    trainer.save_metrics("train", output.metrics)
    dataset_name = [name for source in sources if source and (name := hub_id(source))] or None  # the card's list
    if dataset_name:
        trainer.create_model_card(dataset_name=dataset_name)
    if training_args.push_to_hub and trainer.accelerator.is_main_process:
        if is_peft_model(trainer.model) and hub_id(model_args.model_name_or_path) is None:
            logger.warning(
                f"The adapter's base model is a local folder ({public_name(model_args.model_name_or_path)}): the "
                "published adapter loads only where that folder exists. Publish the base model and train from its "
                "Hub id to make it loadable from the Hub alone."
            )
        # the saved folder as it is (what a rerun of a finished training reuses), without its checkpoints
        url = push_folder(
            training_args.output_dir,
            trainer.hub_model_id,
            private=bool(training_args.hub_private_repo),
            revision=training_args.hub_revision,
            commit_message="End of training",
            token=training_args.hub_token,
        )
        trainer.accelerator.print(
            f"Published the trained {'adapter' if is_peft_model(trainer.model) else 'model'} to {url}"
        )
    trainer.accelerator.wait_for_everyone()
    trainer.end()


# ---------------------------------------------------------------------------------------------------------------------
# The stages of `iterate` and `pipeline`


def starting_policy(model_args) -> tuple[str, str]:
    """`(path, name)` of the starting policy: the model given, or the packaged default; the name (its Hub id, else
    the last part of its path: `trl_sso.names.public_name`) is what provenance, reports and cards show."""
    if model_args.model_name_or_path:
        return model_args.model_name_or_path, public_name(model_args.model_name_or_path)
    return default_model_path(), DEFAULT_MODEL_ID


def vllm_engine(options: GenerationOptions):
    """The vLLM engine (or server client) a run keeps across its generation stages; None without `use_vllm`."""
    if not options.use_vllm:
        return None
    return VLLMEngine(options)


def generate_stage(options: GenerationOptions, model_args, training_args, *, model: str, engine=None, **settings):
    """Generate with `model` under `options`; `settings` gives the output folder and the provenance. The starting
    policy is loaded with the revision of `model_args`; later policies are local folders. With a vLLM `engine`
    (`vllm_engine`), the engine hands its GPU memory back before the stage returns, so that training has it."""
    revision = model_args.model_revision if model == model_args.model_name_or_path else "main"
    args = GenerateArguments(
        **dataclasses.asdict(options),
        model_name_or_path=model,
        model_revision=revision,
        trust_remote_code=training_args.trust_remote_code,
        dtype=model_args.dtype or "auto",
        **settings,
    )
    dataset, summary = generate(args, engine=engine)
    if engine is not None:
        engine.release()
    gc.collect()
    return dataset, summary


def stage_metrics(summary: dict, records: list[dict]) -> dict[str, float]:
    """The generation a stage trains on, as metrics for the `--report_to` trackers (`generation/`): its counts, and
    the signal of one generation as online training logs it (`trl_sso.generation.generator.generation_metrics`)."""
    overall = ((summary.get("signal") or {}).get("accuracy") or {}).get("overall")
    shared = generation_metrics(summary["num_prompts"], records, summary["dropped"], overall)
    counts = {
        "prompts": summary["num_prompts"],
        "records": summary["num_records"],
        "principle_fallbacks": summary["principle_fallbacks"],
    }
    return {f"generation/{key}": value for key, value in {**counts, **shared}.items()}


def train_stage(
    model_path, dataset, training_args, model_args, output_dir, callbacks=None, generation=None, **overrides
):
    """Train with SSOTrainer into `output_dir` (resuming from its last checkpoint); returns the final metrics. The
    stage publishes nothing itself; `generation` (the summary of the data) is logged to the `--report_to` trackers
    first; `overrides` set `SSOConfig` fields for this stage only, checked as the constructor checks them
    (`SSOConfig.for_stage`)."""
    from ..trainer import SSOTrainer

    args = training_args.for_stage(
        output_dir=str(output_dir), push_to_hub=False, hub_model_id=None, resume_from_checkpoint=None, **overrides
    )
    trainer, _ = train_and_save(
        SSOTrainer,
        model_path,
        model_args,
        args,
        before_train=generation and (lambda trainer: trainer.log(stage_metrics(generation, dataset.to_list()))),
        train_dataset=dataset,
        callbacks=callbacks,
    )
    metrics = final_metrics(trainer.state.log_history)
    del trainer
    gc.collect()
    return metrics


def save_next_policy(base_path: str, trained_dir: Path, target: Path) -> None:
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
        (folder / "README.md").write_text(policy_card(base_path))

    save_folder_atomic(target, save)


def policy_card(base_path: str) -> str:
    """The small card of a saved next policy: it inherits its base's license (`trl_sso.cards.model_license`), which
    the data it generates in the next round inherits in turn."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(base_model=hub_id(base_path), tags=["trl", "sso"], **model_license(base_path))
    return (
        f"---\n{data.to_yaml()}\n---\n\nA policy after a round of Self-Steering Optimization, saved by trl-sso as a "
        "full checkpoint (with PEFT, the adapter merged into its base).\n"
    )


def signal_stage(
    policy: str, records: list | None, options: GenerationOptions, pipe_args, path: Path, engine=None
) -> dict:
    """Under `policy`: on-policyness of `records` (the data it generated; `None` for the final policy) and its
    evaluation on held-out prompts. Written to `path` (JSON) and reused by a rerun. A vLLM server that holds `policy`
    (`engine`, server mode) scores A(x, y)."""
    if path.exists():
        return json.loads(path.read_text())
    model, tokenizer = load_policy(policy)
    result = {}
    if records:
        score_rows = engine.scorer(policy, tokenizer) if engine is not None else None
        values, rate = mean_logps(model, tokenizer, records, score_rows=score_rows)
        # the per-record A(x, y) stay beside the report, so that any figure can be recomputed (or compared across runs)
        result["onpolicy"] = {**onpolicy_report(values), "records_per_second": rate, "per_record": values}
    prompts = load_prompts(pipe_args.eval_prompts, num_prompts=pipe_args.eval_num_prompts, packaged="eval_prompts")
    sampler = TransformersSampler(model, tokenizer)
    result["evaluation"], answers = score_answers(
        sampler, prompts, evaluation_features(options), pipe_args.eval_max_completion_length
    )
    result["evaluation"]["answers"] = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)]  # to read them
    del model
    gc.collect()
    write_json_atomic(path, result, indent=2)
    return result
