"""Cards rendered from the templates in `cards/` (shipped in the wheel as `trl_sso/cards`), filled from the metadata
the artifacts carry (the trainer's config and state), never typed by hand and never holding secrets."""

import os
import re
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .data import SSO_COLUMNS


SSO_CITATION = textwrap.dedent("""\
    @article{xiang2024sso,
        title   = {{Aligning Large Language Models via Self-Steering Optimization}},
        author  = {Hao Xiang and Bowen Yu and Hongyu Lin and Keming Lu and Yaojie Lu and Xianpei Han and Le Sun and Jingren Zhou and Junyang Lin},
        journal = {arXiv preprint arXiv:2410.17131},
        year    = {2024},
        url     = {https://huggingface.co/papers/2410.17131},
    }""")  # noqa: E501  (BibTeX author lists stay on one line)

TRL_CITATION = textwrap.dedent("""\
    @software{vonwerra2020trl,
        title   = {{TRL: Transformers Reinforcement Learning}},
        author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
        license = {Apache-2.0},
        url     = {https://github.com/huggingface/trl},
        year    = {2020},
    }""")  # noqa: E501

_OBJECTIVE_SUMMARY = {
    "policy": "paper v1: the main pair plus the weighted steering pairs",
    "generator": "paper v2: the two steering pairs, to train a data generator",
}
# Config fields shown on the model card: the SSO method, the base loss and the optimisation (no paths, no tokens).
_CARD_SETTINGS = (
    "sso_objective",
    "sso_steer_coef",
    "sso_use_weight",
    "sso_weight_alpha",
    "sso_detach_weight",
    "sso_sft_coef",
    "loss_type",
    "beta",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "seed",
)


def hub_id(name: str | None) -> str | None:
    """`name` when it is a Hub repo id (`name` or `namespace/name`), `None` for a local path or anything else: a local
    path says nothing to readers of a card or a report. The one rule trl-sso uses to tell them apart. The packaged
    default model's cache folder is `HuggingFaceTB/SmolLM2-135M-Instruct`, the Hub model it was published as."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .offline import DEFAULT_MODEL_ID, packaged_model_folder

    if name and os.path.isdir(name) and Path(name).resolve() == packaged_model_folder().resolve():
        return DEFAULT_MODEL_ID  # the packaged SmolLM2, converted into trl-sso's cache: the Hub model it came from
    if not name or name.startswith((".", "/", "~")) or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def public_name(name: str) -> str:
    """How a model or file is named where others read it (cards, reports, summaries, dataset rows): its Hub id, else
    only the last part of its local path."""
    return hub_id(name) or Path(name).name


def template_path(name: str) -> Path:
    """Path of a card template: inside the installed package, or in the source tree's `cards/` folder."""
    for folder in (Path(__file__).parent / "cards", Path(__file__).parent.parent / "cards"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"Card template {name!r} not found; the trl-sso installation is incomplete.")


def framework_versions() -> list[tuple[str, str]]:
    out = []
    for package, name in (
        ("trl-sso", "trl-sso"),
        ("trl", "TRL"),
        ("transformers", "Transformers"),
        ("torch", "PyTorch"),
        ("datasets", "Datasets"),
        ("peft", "PEFT"),
    ):
        try:
            out.append((name, version(package)))
        except PackageNotFoundError:
            continue
    return out


def sso_model_card(
    args: Any,
    model_name: str,
    base_model: str | None,
    dataset_name: str | None,
    hub_model_id: str | None,
    tags: list[str],
    is_adapter: bool,
    results: dict[str, float] | None = None,
    quantization: dict[str, Any] | None = None,
):
    """The model card of an SSO-trained model or adapter (`library_name: peft` for adapters), with the final training
    metrics and, for QLoRA, the quantization of the base model."""
    from huggingface_hub import ModelCard, ModelCardData

    settings = [(name, getattr(args, name)) for name in _CARD_SETTINGS if hasattr(args, name)]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=dataset_name,
        library_name="peft" if is_adapter else "transformers",
        model_name=model_name,
        tags=tags,
        pipeline_tag="text-generation",
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("sso_model_card.md")),
        model_name=model_name,
        base_model=base_model,
        dataset_name=dataset_name,
        repo_id=hub_model_id or model_name,
        is_adapter=is_adapter,
        objective=args.sso_objective,
        objective_summary=_OBJECTIVE_SUMMARY[args.sso_objective],
        settings=settings,
        versions=framework_versions(),
        paper_id="2410.17131",
        results=sorted((results or {}).items()),
        quantization=sorted((quantization or {}).items()),
        sso_citation=SSO_CITATION,
        trl_citation=TRL_CITATION,
    )


# Logged values kept on the model card: the main training metrics (loss, rewards, the SSO terms)
_CARD_METRICS = (
    "loss",
    "train_loss",
    "rewards/accuracies",
    "rewards/margins",
    "steer_pos/rewards/margins",
    "steer_neg/rewards/margins",
    "sso/weight",
    "eval_loss",
    "eval_rewards/accuracies",
)
# Quantization settings of a QLoRA base model shown on the card
_CARD_QUANTIZATION = (
    "load_in_4bit",
    "load_in_8bit",
    "bnb_4bit_quant_type",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_use_double_quant",
)


def final_metrics(log_history: list[dict]) -> dict[str, float]:
    """The last logged value of each of the main training metrics in a trainer's `log_history`."""
    results = {}
    for entry in log_history:
        results.update({k: v for k, v in entry.items() if k in _CARD_METRICS and isinstance(v, (int, float))})
    return results


def quantization_summary(model_config: Any) -> dict[str, Any] | None:
    """The 4/8-bit settings of a quantized model's config, or `None` for a model in full precision."""
    config = getattr(model_config, "quantization_config", None)
    if config is None:
        return None
    config = config if isinstance(config, dict) else config.to_dict()
    return {k: config[k] for k in _CARD_QUANTIZATION if config.get(k) not in (None, False)}


def trainer_model_card(trainer: Any, output_dir: str, model_name=None, dataset_name=None, tags=None):
    """The SSO model card of what an `SSOTrainer` trained (model or adapter), from its config, model and state."""
    from accelerate.utils import is_peft_model
    from trl.trainer.utils import get_config_model_id

    tags = {tags} if isinstance(tags, str) else set(tags or ())
    return sso_model_card(
        args=trainer.args,
        model_name=model_name or os.path.basename(os.path.normpath(output_dir)),
        base_model=hub_id(get_config_model_id(trainer.model.config)),
        dataset_name=dataset_name,
        hub_model_id=trainer.hub_model_id,
        tags=sorted(tags | set(trainer._tag_names)),
        is_adapter=is_peft_model(trainer.model),
        results=final_metrics(trainer.state.log_history),
        quantization=quantization_summary(trainer.model.config),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Dataset card

_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(n: int) -> str:
    return next((label for limit, label in _SIZE_CATEGORIES if n < limit), "n>1M")


def latest_config(config_names: list[str], pushed: str) -> str:
    """The config a dataset repo loads by default: the highest `iteration_<t>`, else the one just pushed."""
    rounds = [(int(name.rsplit("_", 1)[1]), name) for name in config_names if re.fullmatch(r"iteration_\d+", name)]
    return max(rounds)[1] if rounds else pushed


def sso_dataset_card(
    dataset, summary: dict | None, repo_id: str, config_name: str, existing: dict, image: str | None = None
):
    """The card of a pushed SSO dataset. `existing` is the repo's current card metadata: its `configs` and
    `dataset_info` (written by `push_to_hub`) are kept, so every pushed round stays loadable. `image` is the path of
    the accuracy plot, relative to the card."""
    import json

    from huggingface_hub import DatasetCard, DatasetCardData

    metadata = dict(existing)
    tags = sorted(set(metadata.get("tags") or []) | {"trl", "sso", "synthetic", "preference"})
    metadata.update(
        license=metadata.get("license") or "other",
        task_categories=metadata.get("task_categories") or ["text-generation"],
        tags=tags,
        size_categories=[size_category(len(dataset))],
        pretty_name=metadata.get("pretty_name") or f"SSO preferences: {repo_id.split('/')[-1]}",
    )
    config_names = [c["config_name"] for c in metadata.get("configs") or []] or [config_name]
    if metadata.get("configs"):  # the latest round loads by default: `load_dataset(repo)` needs no config name
        default = latest_config(config_names, config_name)
        metadata["configs"] = [
            {
                **{k: v for k, v in c.items() if k != "default"},
                **({"default": True} if c["config_name"] == default else {}),
            }
            for c in metadata["configs"]
        ]
    example = {k: v for k, v in dataset[0].items() if k in SSO_COLUMNS}
    text = json.dumps(example, ensure_ascii=False, indent=2)
    return DatasetCard.from_template(
        DatasetCardData(**metadata),
        template_path=str(template_path("sso_dataset_card.md")),
        pretty_name=metadata["pretty_name"],
        repo_id=repo_id,
        config_name=config_name,
        config_names=config_names,
        num_records=len(dataset),
        extra_columns=[c for c in dataset.column_names if c not in SSO_COLUMNS],
        example=text if len(text) < 4000 else text[:4000] + "\n...",
        summary=summary,
        image=image,
        sso_citation=SSO_CITATION,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Cards of pushed folders (models, adapters, reward models)


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def reward_model_card(path: Path, repo_id: str):
    """The card of a reward model folder, with the pairwise accuracy recorded next to it (`eval_results.json` or
    `all_results.json`, as `eval_accuracy`)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = _read_json(path / "config.json")
    results = {**_read_json(path / "all_results.json"), **_read_json(path / "eval_results.json")}
    sso = _read_json(path / "sso_reward.json")  # written by `trl-sso reward`: base model and dataset ids
    base_model = hub_id(sso.get("base_model") or config.get("_name_or_path"))
    card_data = ModelCardData(
        base_model=base_model,
        datasets=sso.get("dataset_name"),
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["trl", "sso", "reward-model"],
        model_name=repo_id.split("/")[-1],
    )
    accuracy = results.get("eval_accuracy")
    if accuracy is not None:
        card_data.metrics = ["accuracy"]
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("reward_model_card.md")),
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        dataset_name=sso.get("dataset_name"),
        repo_id=repo_id,
        accuracy=accuracy,
        eval_size=results.get("eval_samples"),
        versions=framework_versions(),
        sso_citation=SSO_CITATION,
    )


def folder_card(path: Path, kind: str, repo_id: str):
    """The card to publish with a model, adapter or reward-model folder: the SSO card SSOTrainer wrote (with the
    repo id filled in), else one built from the folder's own metadata."""
    from huggingface_hub import ModelCard, ModelCardData

    if kind == "reward_model":
        return reward_model_card(path, repo_id)
    readme = path / "README.md"
    if readme.exists() and "sso" in (ModelCard.load(readme).data.tags or []):
        card = ModelCard.load(readme)
        local_name = card.data.model_name
        if local_name and local_name != repo_id:
            card.content = card.content.replace(f'"{local_name}"', f'"{repo_id}"')
        return card
    adapter = _read_json(path / "adapter_config.json")
    config = _read_json(path / "config.json")
    base_model = hub_id(adapter.get("base_model_name_or_path") or config.get("_name_or_path"))
    data = ModelCardData(
        base_model=base_model,
        library_name="peft" if kind == "adapter" else "transformers",
        tags=["trl", "sso"],
        pipeline_tag="text-generation",
        model_name=repo_id.split("/")[-1],
    )
    what = "A PEFT adapter" if kind == "adapter" else "A model"
    return ModelCard(
        f"---\n{data.to_yaml()}\n---\n\n# {repo_id.split('/')[-1]}\n\n{what} trained with Self-Steering Optimization "
        f"([SSO](https://huggingface.co/papers/2410.17131)) using trl-sso.\n\n"
        f"## Citation\n\n```bibtex\n{SSO_CITATION}\n```\n"
    )
