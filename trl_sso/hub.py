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
import re
import tempfile
from pathlib import Path

from .cards import folder_card, sso_dataset_card
from .data import (
    GENERATED_DATA_DIR,
    GENERATED_DATA_FILE,
    load_dataset_split,
    load_sso_dataset,  # noqa: F401  (pulling, documented here before 0.2; its home is `trl_sso.data`)
)
from .files import write_json_atomic
from .names import hub_id
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


def _commit(api, repo_id, repo_type, revision, remote: list[str], additions: dict, keep, message: str) -> None:
    """One commit that leaves `additions` (`{path_in_repo: local path or bytes}`) on the branch and deletes every
    other file of `remote` (the branch's files) for which `keep(path)` is false (`.gitattributes` always stays).
    huggingface_hub drops the files that have not changed and makes no commit when nothing did, so committing the
    same content again adds nothing."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    stale = [path for path in remote if path not in additions and path != ".gitattributes" and not keep(path)]
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=content) for p, content in additions.items()]
    operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
    api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type, revision=revision)


def _parquet_shards(dataset, folder: Path, max_shard_size: int = 500 * 2**20) -> list[Path]:
    """`dataset` written as Parquet shards `train-XXXXX-of-YYYYY.parquet` in `folder` (datasets' layout and shard
    size). The same rows give the same bytes, so a shard published before is recognised as unchanged."""
    num_shards = min(max(1, (dataset.data.nbytes // max_shard_size) + 1), max(len(dataset), 1))
    shards = []
    for index in range(num_shards):
        shard = folder / f"train-{index:05d}-of-{num_shards:05d}.parquet"
        dataset.shard(num_shards=num_shards, index=index, contiguous=True).to_parquet(str(shard))
        shards.append(shard)
    return shards


def _dataset_card_data(api, repo_id, revision, remote: list[str], config_name: str, data_dir: str, dataset, shards):
    """The card metadata of the repo (whose files are `remote`) with the config `config_name` (its data files and its
    `dataset_info`) added or replaced, through datasets' own metadata helpers."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData, hf_hub_download

    if "README.md" in remote:
        readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision, token=api.token)
        data = DatasetCard.load(readme).data
    else:
        data = DatasetCardData()
    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_bytes=dataset.data.nbytes, num_examples=len(dataset)))
    size = sum(shard.stat().st_size for shard in shards)
    info = DatasetInfo(features=dataset.features, splits=splits, download_size=size, dataset_size=dataset.data.nbytes)
    DatasetInfosDict({config_name: info}).to_dataset_card_data(data)
    files = {"data_files": [{"split": "train", "path": f"{data_dir}/train-*"}]}
    MetadataConfigs({config_name: files}).to_dataset_card_data(data)
    return data.to_dict()


def push_dataset(path, repo_id, *, config_name=None, private=False, revision=None, commit_message=None, token=None):
    """Push a generated (or saved) SSO dataset as config `config_name` (default `iteration_<t>` from its summary, else
    `default`) with its dataset card and accuracy plot, keeping the other configs. One commit; nothing is committed
    when the repo already holds exactly this (a rerun after a partial or a finished push adds only what is missing).
    Returns the repo URL."""
    summary = _summary(Path(path))
    dataset = load_dataset_split(str(path))
    if config_name is None:
        iteration = (summary or {}).get("settings", {}).get("iteration")
        config_name = f"iteration_{iteration}" if iteration else "default"
    data_dir = "data" if config_name == "default" else config_name
    api = _api(token)
    _ensure_repo(api, repo_id, "dataset", private, revision)
    plot = Path(path) / "accuracy.png"  # the accuracy plot `trl-sso generate` draws beside the data
    image = f"signal/{config_name}/accuracy.png" if plot.is_file() else None

    def publish():
        with tempfile.TemporaryDirectory() as tmp:
            shards = _parquet_shards(dataset, Path(tmp))
            remote = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
            existing = _dataset_card_data(api, repo_id, revision, remote, config_name, data_dir, dataset, shards)
            card = sso_dataset_card(dataset, summary, repo_id, config_name, existing, image)
            additions = {f"{data_dir}/{shard.name}": str(shard) for shard in shards}
            additions["README.md"] = str(card).encode()
            if image:
                additions[image] = str(plot)
            _commit(
                api,
                repo_id,
                "dataset",
                revision,
                remote,
                additions,
                keep=lambda p: not p.startswith(f"{data_dir}/train-"),  # other configs and files stay
                message=commit_message or f"Add SSO dataset config {config_name}",
            )

    _retry(publish, f"Pushing dataset {repo_id} ({config_name})")
    return f"{api.endpoint}/datasets/{repo_id}"


def _pushed_checkpoint(path_in_repo: str) -> bool:
    """A checkpoint that transformers pushed during training (`hub_strategy` "checkpoint" or "all_checkpoints"), kept
    so that training can resume from the Hub."""
    top = path_in_repo.split("/")[0]
    return "/" in path_in_repo and (top == "last-checkpoint" or re.fullmatch(r"checkpoint-\d+", top) is not None)


def push_folder(path, repo_id, *, kind=None, private=False, revision=None, commit_message=None, token=None, card=None):
    """Push a model, adapter or reward-model folder with its card (`card`, else the SSO card SSOTrainer wrote, else
    one rendered from the folder's metadata) in one commit that makes the branch hold exactly this artifact: files
    left there by anything else (the full model a branch was created from, an earlier upload) are deleted, and a
    rerun that changes nothing commits nothing. Checkpoints, `training_args.bin` and logs stay local. Returns the
    repo URL."""
    from huggingface_hub.utils import filter_repo_objects

    path = Path(path)
    kind = kind or detect_artifact(path)
    card = card or folder_card(path, kind, repo_id)
    adapter_config = _published_adapter_config(path)
    api = _api(token)
    _ensure_repo(api, repo_id, "model", private, revision)
    ignore = ["training_args.bin", "sso_run_settings.json", "checkpoint-*", "checkpoint-*/*", "runs/*", "*.lock", ".*"]
    ignore += ["*/.*", "README.md"]  # the local run: its arguments, checkpoints, logs and locks
    files = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
    additions = {name: str(path / name) for name in filter_repo_objects(files, ignore_patterns=ignore)}
    if adapter_config is not None:  # the base named by Hub id in the repo; the local file stays as it is
        additions["adapter_config.json"] = json.dumps(adapter_config, indent=2).encode()
    if card is not None:
        additions["README.md"] = str(card).encode()
    message = commit_message or f"Upload SSO {kind.replace('_', ' ')}"

    def publish():
        remote = api.list_repo_files(repo_id, revision=revision)
        _commit(api, repo_id, "model", revision, remote, additions, keep=_pushed_checkpoint, message=message)

    _retry(publish, f"Pushing {kind.replace('_', ' ')} {repo_id}")
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
