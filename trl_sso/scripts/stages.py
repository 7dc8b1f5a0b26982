"""The stages that `trl-sso iterate` and `trl-sso pipeline` are made of: the starting policy, a generation stage, a
training stage (resumed from its last checkpoint), and the next policy saved as a full checkpoint. Each stage's final
artifact is written atomically, so a rerun skips the stages that finished."""

import dataclasses
import gc
import json
from pathlib import Path

from ..cards import final_metrics, model_license
from ..files import save_folder_atomic, write_json_atomic
from ..generation import generate
from ..generation.arguments import GenerateArguments, GenerationOptions
from ..generation.generator import generation_metrics
from ..generation.prompts import load_prompts
from ..generation.samplers import TransformersSampler
from ..generation.vllm import VLLMEngine
from ..names import DEFAULT_MODEL_ID, hub_id, public_name
from ..offline import default_model_path
from ..options import check_ranges
from ..principles import VERIFIABLE, expand_feature_names, known_features
from ..signal.intervals import (
    all_equal_note,
    bootstrap_mean,
    paired_mean_change,
    paired_score_change,
    score_mean,
    with_interval,
)
from ..signal.onpolicy import load_policy, mean_logps, onpolicy_report
from .common import train_and_save


@dataclasses.dataclass
class IterateArguments:
    """Options of `trl-sso iterate` beyond generation, training and model arguments."""

    rounds: int = dataclasses.field(default=3, metadata={"help": "Online rounds (the paper runs 3)."})
    hub_dataset_id: str | None = dataclasses.field(
        default=None, metadata={"help": "Publish each round's dataset to this repo, as config iteration_<t>."}
    )
    round_signal: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "Measure each round's signal under its policy (on-policyness) and evaluate the policy on "
            "held-out prompts, into report.json, rounds.json and rounds.png."
        },
    )
    eval_prompts: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Held-out prompts each round's policy answers with no principle (file, saved dataset or dataset "
            "name; column `prompt`). Default: the 40 packaged held-out prompts, disjoint from the generation prompts."
        },
    )
    eval_num_prompts: int | None = dataclasses.field(
        default=40, metadata={"help": "Use only the first N held-out prompts (all of them: leave it unset)."}
    )
    eval_max_completion_length: int = dataclasses.field(
        default=128, metadata={"help": "Maximum new tokens of the held-out answers."}
    )

    def __post_init__(self):
        check_ranges(self)


@dataclasses.dataclass
class PipelineArguments:
    """Options of `trl-sso pipeline` beyond generation, training and model arguments."""

    policy_num_prompts: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Queries the trained generator writes pairs for (default: as many as it was trained on)."},
    )
    hub_dataset_id: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Publish the generator's training data and the pairs it wrote to this dataset repo."},
    )

    def __post_init__(self):
        check_ranges(self)


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


def evaluation_features(options: GenerationOptions) -> dict:
    """The verifiable features a policy is evaluated on: those the data were generated with, else all of them."""
    features = known_features(options.features_file)
    names = expand_feature_names(options.features, features) if options.features else []
    names = [name for name in names if features[name].checker is not None] or list(VERIFIABLE)
    return {name: features[name] for name in names}


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


def score_answers(sampler, prompts, features, max_new_tokens=128, temperature=0.0, seed=42, top_p=1.0):
    """Let the policy of `sampler` answer `prompts` (no principle) and score the answers with the checkers of
    `features` (name -> `Feature`). Returns the scores and the answers: per feature, the share of answers following
    its good side and the per-prompt 0/1 scores; their mean per prompt, its mean; the mean tokens and the truncated
    share. Every share and mean carries its 95% interval (`trl_sso.signal.intervals`: Wilson on the summed scores;
    tokens: bootstrap)."""
    completions = sampler.sample(prompts, temperature, top_p, max_new_tokens, seed)
    n = len(completions)
    scores = {name: [f.checker(c.text) for c in completions] for name, f in features.items()}
    per_prompt = [sum(s[i] for s in scores.values()) / len(scores) for i in range(n)]
    tokens = [c.num_tokens for c in completions]
    row = {
        "follows_good": {name: score_mean(s)[0] for name, s in scores.items()},
        "follows_good_ci95": {name: score_mean(s)[1] for name, s in scores.items()},
        "follows_good_per_feature": scores,
        "follows_good_per_prompt": per_prompt,
        "mean_tokens": sum(tokens) / n,
        "mean_tokens_ci95": bootstrap_mean(tokens),
        "tokens_per_prompt": tokens,
    }
    row["follows_good_mean"], row["follows_good_mean_ci95"] = score_mean(per_prompt)
    row["truncated"], row["truncated_ci95"] = score_mean([float(not c.finished) for c in completions])
    if all_equal_note(tokens):
        row["mean_tokens_note"] = all_equal_note(tokens)
    return row, [c.text for c in completions]


def held_out_change(after: dict, before: dict) -> dict:
    """How the held-out follow rate changed between two evaluations of the same prompts (`paired_score_change`,
    prefixed keys without it: `change`, `change_ci95`, `change_p_value`, ...), with the change of mean tokens beside it
    (`tokens_change`, paired bootstrap)."""
    change = paired_score_change(after["follows_good_per_prompt"], before["follows_good_per_prompt"])
    result = {
        "change": change["change"],
        "change_ci95": change["ci95"],
        "change_p_value": change["p_value"],
        "change_test": change["test"],
        "change_significant": change["significant"],
        "change_gained": change["gained"],
        "change_lost": change["lost"],
        "pairs": change["pairs"],
    }
    if "tokens_per_prompt" in after and "tokens_per_prompt" in before:
        tokens = paired_mean_change(after["tokens_per_prompt"], before["tokens_per_prompt"])
        result["tokens_change"], result["tokens_change_ci95"] = tokens["change"], tokens["ci95"]
        if "note" in tokens:
            result["tokens_change_note"] = tokens["note"]
    return result


def format_change(change: dict) -> str:
    """A held-out change for tables: `+0.25 [0.06, 0.46] significant (exact McNemar p 0.016)`."""
    verdict = "significant" if change["change_significant"] else "within noise"
    figure = with_interval(change["change"], change["change_ci95"]).replace("-0.00", "0.00")
    sign = "+" if change["change"] > 0 else ""
    p = change["change_p_value"]
    return f"{sign}{figure} {verdict} ({change['change_test']} p {'< 0.001' if p < 0.001 else f'{p:.3f}'})"
