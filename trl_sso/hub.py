"""Publishing SSO artifacts to the Hugging Face Hub.

`push(path, repo_id, ...)` finds out what `path` holds (`detect_artifact`) and publishes it with the right card: a
generated dataset (each online round as its own config, `iteration_<t>`, so earlier rounds stay loadable), an
SSO-trained model, a (Q)LoRA adapter, or a reward model. Pulling is loading: `trl_sso.data.load_sso_dataset`.

Transient failures are retried (`trl_sso.retries`); permanent ones raise a `HubPushError` that says what to fix.
Nothing local is modified by a push, so a failed push can simply be run again, and pushing the same content twice is
harmless. Tokens are passed to huggingface_hub only: never printed, logged, or written into cards.
"""

import json
import logging
from pathlib import Path

from .data import (
    GENERATED_DATA_DIR,
    GENERATED_DATA_FILE,
    load_dataset_split,
    load_sso_dataset,  # noqa: F401  (pulling, documented here before 0.2; its home is `trl_sso.data`)
)
from .retries import HubError, with_retries


logger = logging.getLogger(__name__)
HubPushError = HubError  # the name publishing errors had before 0.2

PUSH_ADVICE = (
    "Publishing needs a token with write access. The local files are untouched: run the same push again once this "
    "is fixed."
)


def _retry(action, what: str):
    """`action` retried as `trl_sso.retries.with_retries` does, with the advice that fits a push."""
    return with_retries(action, what, advice=PUSH_ADVICE)


# ---------------------------------------------------------------------------------------------------------------------
# What a folder holds


def detect_artifact(path: str | Path) -> str:
    """`"dataset"`, `"adapter"`, `"reward_model"` or `"model"`, from the files in `path`."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder. Pass a generated dataset, model or adapter folder.")
    if (path / GENERATED_DATA_DIR / GENERATED_DATA_FILE).is_file() or (path / "dataset").is_dir():
        return "dataset"  # a `trl-sso generate` folder (this layout or 0.1.0's)
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        return "dataset"
    if (path / "adapter_config.json").exists():
        task = json.loads((path / "adapter_config.json").read_text()).get("task_type")
        return "reward_model" if task == "SEQ_CLS" else "adapter"
    if (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
        if any(arch.endswith("ForSequenceClassification") for arch in config.get("architectures") or []):
            return "reward_model"
        return "model"
    raise ValueError(
        f"{str(path)!r} holds neither a generated dataset (data/ and summary.json), a saved dataset, a model "
        "(config.json) nor an adapter (adapter_config.json)."
    )


def _summary(path: Path) -> dict | None:
    """The generation summary of a dataset folder: beside the data, or one level up for a 0.1.0 `dataset/` folder."""
    for candidate in (path / "summary.json", path.parent / "summary.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def point_adapter_at(folder: str | Path, base_model: str | None, revision: str | None = None) -> None:
    """Make the adapter saved in `folder` name `base_model` (a Hub id) at `revision` as its base, so that
    `AutoPeftModelFor*.from_pretrained` loads it from the Hub alone. PEFT records the path the base was loaded from,
    which for a local folder (the packaged model's cache, an earlier round's policy) means nothing elsewhere. Does
    nothing when `folder` holds no adapter or `base_model` is `None`."""
    from .files import write_json_atomic

    path = Path(folder) / "adapter_config.json"
    if base_model is None or not path.is_file():
        return
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model
    config["revision"] = None if revision in (None, "main") else revision
    write_json_atomic(path, config, indent=2)


def _published_adapter_config(path: Path) -> dict | None:
    """The adapter config to publish in place of `path`'s when its base is a local folder with a Hub id (the packaged
    model's cache); `None` when it needs no change. A base with no Hub id at all gets a warning: the adapter will not
    load from the Hub alone until its base is published and named (`point_adapter_at`)."""
    from .cards import hub_id

    file = path / "adapter_config.json"
    if not file.is_file():
        return None
    config = json.loads(file.read_text())
    base = config.get("base_model_name_or_path")
    if not base or hub_id(base) == base:
        return None
    if hub_id(base) is None:
        logger.warning(
            f"The adapter in {path} names a local base model ({Path(base).name}): it will not load from the Hub "
            "alone. Publish the base model and name it with `trl_sso.hub.point_adapter_at`, then push again."
        )
        return None
    return {**config, "base_model_name_or_path": hub_id(base)}


# ---------------------------------------------------------------------------------------------------------------------
# Pushing


def _api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _ensure_repo(api, repo_id: str, repo_type: str, private: bool, revision: str | None) -> None:
    _retry(
        lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True),
        f"Creating {repo_type} repo {repo_id}",
    )
    if revision and revision != "main":
        _retry(
            lambda: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True),
            f"Creating branch {revision} of {repo_id}",
        )


def push_dataset(path, repo_id, *, config_name=None, private=False, revision=None, commit_message=None, token=None):
    """Push a generated (or saved) SSO dataset as config `config_name` (default `iteration_<t>` from its summary, else
    `default`) and write its dataset card, keeping the `configs` of earlier pushes. Returns the repo URL."""
    from .cards import sso_dataset_card

    summary = _summary(Path(path))
    dataset = load_dataset_split(str(path))
    if config_name is None:
        iteration = (summary or {}).get("settings", {}).get("iteration")
        config_name = f"iteration_{iteration}" if iteration else "default"
    api = _api(token)
    _ensure_repo(api, repo_id, "dataset", private, revision)
    message = commit_message or f"Add SSO dataset config {config_name}"
    _retry(
        lambda: dataset.push_to_hub(
            repo_id, config_name=config_name, private=private, revision=revision, commit_message=message, token=token
        ),
        f"Pushing dataset {repo_id} ({config_name})",
    )

    image, plot = None, Path(path) / "accuracy.png"  # the accuracy plot `trl-sso generate` draws beside the data
    if plot.is_file():
        image = f"signal/{config_name}/accuracy.png"
        _retry(
            lambda: api.upload_file(
                path_or_fileobj=str(plot),
                path_in_repo=image,
                repo_id=repo_id,
                repo_type="dataset",
                revision=revision,
                commit_message=f"Signal plot of {config_name}",
            ),
            f"Uploading the signal plot of {repo_id}",
        )

    def update_card():
        from huggingface_hub import DatasetCard, hf_hub_download

        readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision, token=token)
        existing = DatasetCard.load(readme)
        card = sso_dataset_card(dataset, summary, repo_id, config_name, existing.data.to_dict(), image)
        card.push_to_hub(
            repo_id,
            repo_type="dataset",
            token=token,
            revision=revision,
            commit_message=f"Update dataset card for {config_name}",
        )

    _retry(update_card, f"Updating the dataset card of {repo_id}")
    return f"{api.endpoint}/datasets/{repo_id}"


def push_folder(path, repo_id, *, kind=None, private=False, revision=None, commit_message=None, token=None, card=None):
    """Push a model, adapter or reward-model folder with its card: `card`, else the SSO card SSOTrainer wrote, else
    one rendered from the folder's metadata. Returns the repo URL."""
    from .cards import folder_card

    path = Path(path)
    kind = kind or detect_artifact(path)
    card = card or folder_card(path, kind, repo_id)
    adapter_config = _published_adapter_config(path)
    api = _api(token)
    _ensure_repo(api, repo_id, "model", private, revision)
    ignore = ["training_args.bin", "checkpoint-*", "checkpoint-*/*", "runs/*", "*.lock", ".*"]

    def upload():
        api.upload_folder(
            folder_path=str(path),
            repo_id=repo_id,
            revision=revision,
            ignore_patterns=ignore + ["README.md"],
            commit_message=commit_message or f"Upload SSO {kind.replace('_', ' ')}",
        )
        if adapter_config is not None:  # the base named by Hub id in the repo; the local file stays as it is
            api.upload_file(
                path_or_fileobj=json.dumps(adapter_config, indent=2).encode(),
                path_in_repo="adapter_config.json",
                repo_id=repo_id,
                revision=revision,
                commit_message="Name the adapter's base by its Hub id",
            )
        if card is not None:
            card.push_to_hub(repo_id, token=token, revision=revision, commit_message="Update model card")

    _retry(upload, f"Pushing {kind.replace('_', ' ')} {repo_id}")
    return f"{api.endpoint}/{repo_id}"


def push(path, repo_id, *, config_name=None, private=False, revision=None, commit_message=None, token=None) -> str:
    """Publish whatever `path` holds (see `detect_artifact`) with the right card. Returns the repo URL."""
    kind = detect_artifact(path)
    if kind == "dataset":
        return push_dataset(
            path,
            repo_id,
            config_name=config_name,
            private=private,
            revision=revision,
            commit_message=commit_message,
            token=token,
        )
    if config_name is not None:
        raise ValueError("`config_name` applies to datasets only; for models use `revision` (a branch) instead.")
    return push_folder(
        path, repo_id, kind=kind, private=private, revision=revision, commit_message=commit_message, token=token
    )
