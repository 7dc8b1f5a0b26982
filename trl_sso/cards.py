"""Cards rendered from the templates in `cards/` (shipped in the wheel as `trl_sso/resources/cards`), filled from
the metadata the artifacts carry (the trainer's config and state), never typed by hand and never holding secrets."""

import functools
import json
import os
import re
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .data import PLACEMENT, SSO_COLUMNS
from .names import DEFAULT_MODEL_ID, hub_id
from .signal.intervals import wilson


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


PACKAGED_MODEL_LICENSE = "apache-2.0"  # SmolLM2's license, for the offline default model


def _license_fields(metadata: dict) -> dict[str, str]:
    """`license` (with `license_name` and `license_link` for `other`) from card metadata; `{}` when it is missing or an
    incomplete `other`, which the Hub's card specification does not accept."""
    license_id = metadata.get("license")
    if not license_id or isinstance(license_id, list):
        return {}
    if license_id == "other":
        if not (metadata.get("license_name") and metadata.get("license_link")):
            return {}
        return {k: metadata[k] for k in ("license", "license_name", "license_link")}
    return {"license": license_id}


def model_license(name_or_path: str | None) -> dict[str, str]:
    """The license of a model, for the cards of what is derived from it (a trained model, an adapter, a generated
    dataset): from its card (a local folder's README.md, else its Hub card when the Hub can be reached);
    `apache-2.0` for the packaged SmolLM2 (`None` names it). `{}` when it is not known: cards then name no
    license rather than a wrong or incomplete one."""
    from huggingface_hub import ModelCard

    if name_or_path is None or hub_id(name_or_path) == DEFAULT_MODEL_ID:
        return {"license": PACKAGED_MODEL_LICENSE}
    readme = Path(name_or_path) / "README.md"
    if readme.is_file():
        try:
            return _license_fields(ModelCard.load(readme).data.to_dict())
        except Exception:  # a card that does not parse says nothing about the license
            return {}
    return dict(_hub_license(name_or_path)) if hub_id(name_or_path) else {}


@functools.cache
def _hub_license(repo_id: str) -> tuple:
    """`model_license` of a Hub model, asked once per process: cards are written at every save, and an unreachable
    Hub should cost its timeout once, not each time."""
    from huggingface_hub import ModelCard

    try:
        return tuple(_license_fields(ModelCard.load(repo_id).data.to_dict()).items())
    except Exception:  # no card, no network, offline mode: the license is simply not known
        return ()


def tracker_links() -> dict[str, str]:
    """The experiment-tracker pages of the run in progress, which TRL's cards link too: `wandb`, `trackio`,
    `comet` (only those with a run)."""
    from transformers import is_wandb_available
    from trl.trainer.utils import get_comet_experiment_url, get_trackio_space_url

    links = {"trackio": get_trackio_space_url(), "comet": get_comet_experiment_url()}
    if is_wandb_available():
        import wandb

        links["wandb"] = wandb.run.url if wandb.run is not None else None
    return {name: url for name, url in links.items() if url}


# Packaged files live in `trl_sso/resources/`: the card templates of the repository's `cards/` folder are shipped
# there (`pyproject.toml`); a source checkout (an editable install) reads them where they are written.
_CARDS = Path(__file__).parent / "resources" / "cards"
_SOURCE_CARDS = Path(__file__).parent.parent / "cards"


def template_path(name: str) -> Path:
    """Path of a card template: in the installed package's resources, or in a source checkout's `cards/` folder."""
    folder = _CARDS if _CARDS.is_dir() else _SOURCE_CARDS
    if not (folder / name).is_file():
        raise FileNotFoundError(
            f"Card template {name!r} not found in {folder}; the trl-sso installation is incomplete."
        )
    return folder / name


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
    revision: str | None = None,
    lineage: dict[str, Any] | None = None,
    license: dict[str, str] | None = None,
    links: dict[str, str] | None = None,
):
    """The model card of an SSO-trained model or adapter (`library_name: peft` for adapters), with the final training
    metrics and, for QLoRA, the quantization of the base model. `revision` is the branch the card's snippets load;
    `lineage` describes an online round of `trl-sso iterate` (see `round_lineage`). `dataset_name` is one Hub id or
    a list of them; `license` is `model_license` of the base; `links` are the run's tracker pages
    (`tracker_links`)."""
    from huggingface_hub import ModelCard, ModelCardData

    settings = [(name, getattr(args, name)) for name in _CARD_SETTINGS if hasattr(args, name)]
    datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
    links = links or {}
    if "trackio" in links:  # TRL's cards tag the Trackio run this way
        tags = [tag for tag in tags if not tag.startswith("trackio:")] + [f"trackio:{links['trackio']}"]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=datasets or None,
        library_name="peft" if is_adapter else "transformers",
        model_name=model_name,
        tags=tags,
        pipeline_tag="text-generation",
        **(license or {}),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("sso_model_card.md")),
        model_name=model_name,
        base_model=base_model,
        datasets=datasets,
        links=links,
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
        revision=revision,
        lineage=lineage,
    )


def round_lineage(t: int, rounds: int, start_model: str, adapter: bool, base_branch: bool) -> dict[str, Any]:
    """What the card of online round `t` (of `rounds`) says about the repo's branches: each round's policy on
    `iteration_<t>` (and `main` for the latest), with PEFT each round's adapter on `iteration_<t>-adapter` whose base
    is the previous round's policy; `base` holds the starting model when it is not on the Hub otherwise."""
    start = "the starting model (branch `base`)" if base_branch else f"`{start_model}`"
    branches = [
        ("main", "the policy of the latest finished round"),
        ("iteration_<t>", "the policy after round t" + (", its LoRA adapter merged into its base" if adapter else "")),
    ]
    if adapter:
        branches.append(
            ("iteration_<t>-adapter", f"round t's LoRA adapter, on `iteration_<t-1>` (round 1: on {start})")
        )
    if base_branch:
        branches.append(("base", "the starting model, a local checkpoint published so that round 1's adapter loads"))
    return {"round": t, "rounds": rounds, "start": start, "branches": branches}


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
    """The last logged value of each of the main training metrics in a trainer's `log_history`, in the order of
    `_CARD_METRICS` (a state read back from `trainer_state.json` has its keys sorted: the reports stay the same)."""
    results = {}
    for entry in log_history:
        results.update({k: v for k, v in entry.items() if k in _CARD_METRICS and isinstance(v, (int, float))})
    return {key: results[key] for key in _CARD_METRICS if key in results}


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
    base = get_config_model_id(trainer.model.config)
    return sso_model_card(
        args=trainer.args,
        model_name=model_name or os.path.basename(os.path.normpath(output_dir)),
        base_model=hub_id(base),
        dataset_name=dataset_name,
        hub_model_id=trainer.hub_model_id or output_dir,  # the local card's snippets load the folder itself
        tags=sorted(tags | set(trainer._tag_names)),
        is_adapter=is_peft_model(trainer.model),
        results=final_metrics(trainer.state.log_history),
        quantization=quantization_summary(trainer.model.config),
        license=model_license(base),
        links=tracker_links(),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Dataset card

_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def data_provenance(generator: str | None, prompts: str | None) -> dict[str, Any]:
    """Card metadata a generated dataset inherits: the license of the model that wrote it (`model_license`), and from
    its prompts their language and, for a Hub dataset, `source_datasets`. The packaged prompts are English; the
    language of other prompts is taken from their Hub card, else left out."""
    from huggingface_hub import DatasetCard

    provenance: dict[str, Any] = dict(model_license(generator))
    if prompts is None:
        provenance["language"] = ["en"]
    elif hub_id(prompts):
        provenance["source_datasets"] = [prompts]
        try:
            language = DatasetCard.load(prompts).data.to_dict().get("language")
        except Exception:  # no card, no network, offline mode: the language is not known
            language = None
        if language:
            provenance["language"] = [language] if isinstance(language, str) else list(language)
    return provenance


def size_category(n: int) -> str:
    return next((label for limit, label in _SIZE_CATEGORIES if n < limit), "n>1M")


def latest_config(config_names: list[str], pushed: str) -> str:
    """The config a dataset repo loads by default: the highest `iteration_<t>`, else the one just pushed."""
    rounds = [(int(name.rsplit("_", 1)[1]), name) for name in config_names if re.fullmatch(r"iteration_\d+", name)]
    return max(rounds)[1] if rounds else pushed


def sso_dataset_card(
    dataset,
    summary: dict | None,
    repo_id: str,
    config_name: str,
    existing: dict,
    image: str | None = None,
    local: bool = False,
):
    """The card of a pushed SSO dataset. `existing` is the repo's current card metadata: its `configs` and
    `dataset_info` (written by `push_to_hub`) are kept, so every pushed round stays loadable. `image` is the path of
    the accuracy plot, relative to the card. With `local`, the card of a `trl-sso generate` folder, `repo_id` being
    the folder: its snippets load the folder itself."""
    from huggingface_hub import DatasetCard, DatasetCardData

    metadata = {k: v for k, v in existing.items() if k not in ("license", "license_name", "license_link")}
    tags = sorted(set(metadata.get("tags") or []) | {"trl", "sso", "synthetic", "preference"})
    provenance = (summary or {}).get("provenance") or {}
    metadata.update(
        _license_fields(provenance) or _license_fields(existing),  # the generator's license, else the repo's own
        annotations_creators=["machine-generated"],
        task_categories=metadata.get("task_categories") or ["text-generation"],
        tags=tags,
        size_categories=[size_category(len(dataset))],
        pretty_name=metadata.get("pretty_name") or f"SSO preferences: {repo_id.split('/')[-1]}",
    )
    for key in ("language", "source_datasets"):
        values = sorted(set(metadata.get(key) or []) | set(provenance.get(key) or []))
        if values:
            metadata[key] = values
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
        extra_columns=[c for c in dataset.column_names if c not in (*SSO_COLUMNS, PLACEMENT)],
        example=text if len(text) < 4000 else text[:4000] + "\n...",
        summary=summary,
        image=image,
        local=local,
        sso_citation=SSO_CITATION,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Cards of pushed folders (models, adapters, reward models)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _pairwise_interval(accuracy: float | None, pairs: int | None) -> list[float] | None:
    """The Wilson interval of a pairwise accuracy measured on `pairs` pairs (`None` where either is unknown)."""
    if accuracy is None or not pairs:
        return None
    return wilson(round(accuracy * pairs), int(pairs))


def reward_model_card(path: Path, repo_id: str):
    """The card of a reward model folder (a full model, or a LoRA adapter on its base: `library_name: peft`), with
    the pairwise accuracy recorded next to it (`eval_results.json` or `all_results.json`, as `eval_accuracy`) as a
    `model-index` evaluation result, which the Hub shows."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    config = _read_json(path / "config.json")
    adapter = _read_json(path / "adapter_config.json")
    results = {**_read_json(path / "all_results.json"), **_read_json(path / "eval_results.json")}
    sso = _read_json(path / "sso_reward.json")  # written by `trl-sso reward`: base model and dataset ids
    base = adapter.get("base_model_name_or_path") or sso.get("base_model") or config.get("_name_or_path")
    base_model, dataset_name, name = hub_id(base), sso.get("dataset_name"), repo_id.split("/")[-1]
    accuracy = results.get("eval_accuracy")
    evaluation = None
    if accuracy is not None:
        evaluation = [
            EvalResult(
                task_type="text-classification",
                task_name="Preference pair accuracy",
                dataset_type=dataset_name or "synthetic",
                dataset_name=f"{dataset_name or 'SSO pairs'} (held-out pairs)",
                dataset_split="held-out",
                metric_type="accuracy",
                metric_name="Pairwise accuracy",
                metric_value=accuracy,
            )
        ]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_name] if dataset_name else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-classification",
        tags=["trl", "sso", "reward-model"],
        model_name=name,
        eval_results=evaluation,
        **model_license(base),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("reward_model_card.md")),
        model_name=name,
        base_model=base_model,
        dataset_name=dataset_name,
        repo_id=repo_id,
        is_adapter=bool(adapter),
        accuracy=accuracy,
        accuracy_ci95=_pairwise_interval(accuracy, results.get("eval_samples")),
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
        card = ModelCard.load(readme)  # the local card's snippets load the folder: point them at the repo
        card.content = re.sub(r'(from_pretrained\(|model=)"[^"]*"', lambda m: f'{m.group(1)}"{repo_id}"', card.content)
        return card
    adapter = _read_json(path / "adapter_config.json")
    config = _read_json(path / "config.json")
    base = adapter.get("base_model_name_or_path") or config.get("_name_or_path")
    data = ModelCardData(
        base_model=hub_id(base),
        library_name="peft" if kind == "adapter" else "transformers",
        tags=["trl", "sso"],
        pipeline_tag="text-generation",
        model_name=repo_id.split("/")[-1],
        **model_license(base),
    )
    what = "A PEFT adapter" if kind == "adapter" else "A model"
    return ModelCard(
        f"---\n{data.to_yaml()}\n---\n\n# {repo_id.split('/')[-1]}\n\n{what} trained with Self-Steering Optimization "
        f"([SSO](https://huggingface.co/papers/2410.17131)) using trl-sso.\n\n"
        f"## Citation\n\n```bibtex\n{SSO_CITATION}\n```\n"
    )
