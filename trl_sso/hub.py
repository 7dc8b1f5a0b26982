"""Publishing SSO artifacts to the Hugging Face Hub and pulling SSO datasets from it.

- `push(path, repo_id, ...)` finds out what `path` holds (`detect_artifact`) and publishes it with the right card:
  a generated dataset (each online round as its own config, `iteration_<t>`, so earlier rounds stay loadable), an
  SSO-trained model, a (Q)LoRA adapter, or a reward model.
- `load_sso_dataset(repo_id, config)` loads a published SSO dataset into the canonical schema, converting the two
  public reference formats on the way.

Transient failures (5xx, 429, dropped connections, time-outs) are retried with exponential backoff; permanent ones
(401/403, a missing namespace or repo, an unreachable server) raise a `HubPushError` that says what to fix. Nothing
local is modified by a push, so a failed push can simply be run again, and pushing the same content twice is harmless.
Tokens are passed to huggingface_hub only: never printed, logged, or written into cards.
"""

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar


logger = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class HubPushError(RuntimeError):
    """A push failed for a reason that retrying will not fix; the local artifacts are untouched."""


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(error: BaseException) -> bool:
    status = _status(error)
    if status is not None:
        return status in TRANSIENT_STATUS
    names = {cls.__name__ for cls in type(error).__mro__}
    transient = {"ConnectError", "ReadTimeout", "WriteTimeout", "ConnectTimeout", "RemoteProtocolError", "ReadError",
                 "ConnectionError", "TimeoutError", "ConnectionResetError"}
    return bool(names & transient) and not _server_gone(error)


def _server_gone(error: BaseException) -> bool:
    return "ConnectionRefusedError" in repr(error) or "Connection refused" in str(error)


def with_retries(action: Callable[[], T], what: str, retries: int = 5, backoff: float = 1.0) -> T:
    """Run `action`, retrying transient Hub failures with exponential backoff; turn the others into `HubPushError`."""
    for attempt in range(retries + 1):
        try:
            return action()
        except Exception as error:  # huggingface_hub / httpx errors, and RuntimeErrors wrapping them
            cause = error
            while cause.__cause__ is not None and _status(cause) is None:
                cause = cause.__cause__
            if _status(cause) is None and not (_is_transient(cause) or _server_gone(cause)):
                raise  # not a Hub failure: a bug or bad input, reported as it is
            if _is_transient(cause) and attempt < retries:
                delay = backoff * 2**attempt
                logger.warning(f"{what}: transient error ({_describe(cause)}); retrying in {delay:.1f}s.")
                time.sleep(delay)
                continue
            raise HubPushError(_explain(cause, what)) from error
    raise AssertionError("unreachable")


def _describe(error: BaseException) -> str:
    status = _status(error)
    return f"HTTP {status}" if status else type(error).__name__


def _explain(error: BaseException, what: str) -> str:
    status = _status(error)
    keep = "The local files are untouched: run the same push again once this is fixed."
    if status in (401, 403):
        return (f"{what} was refused (HTTP {status}): the token is missing, invalid or lacks write access to this "
                f"namespace. Log in with `hf auth login` or set HF_TOKEN to a token with write access. {keep}")
    if status == 404:
        return (f"{what} failed (HTTP 404): the namespace, repository or revision does not exist or is not visible "
                f"to this token. Check the repo id (`namespace/name`). {keep}")
    if _server_gone(error) or _is_transient(error):
        return f"{what} failed: the Hub could not be reached ({_describe(error)}). Check the network or HF_ENDPOINT. {keep}"
    return f"{what} failed: {error}. {keep}"


# ----------------------------------------------------------------------------------------------------------------------
# What a folder holds


def detect_artifact(path: str | Path) -> str:
    """`"dataset"`, `"adapter"`, `"reward_model"` or `"model"`, from the files in `path`."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder. Pass a generated dataset, model or adapter folder.")
    if (path / "dataset").is_dir() or (path / "dataset_info.json").exists() or (path / "state.json").exists():
        return "dataset"
    if (path / "adapter_config.json").exists():
        return "adapter"
    if (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
        if any(arch.endswith("ForSequenceClassification") for arch in config.get("architectures") or []):
            return "reward_model"
        return "model"
    raise ValueError(
        f"{str(path)!r} holds neither a generated dataset (dataset/ and summary.json), a saved dataset, a model "
        "(config.json) nor an adapter (adapter_config.json)."
    )


def _dataset_folder(path: Path) -> tuple[Path, dict | None]:
    summary = path / "summary.json"
    if (path / "dataset").is_dir():
        return path / "dataset", json.loads(summary.read_text()) if summary.exists() else None
    parent_summary = path.parent / "summary.json"
    return path, json.loads(parent_summary.read_text()) if parent_summary.exists() else None


# ----------------------------------------------------------------------------------------------------------------------
# Pushing


def _api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _ensure_repo(api, repo_id: str, repo_type: str, private: bool, revision: str | None) -> None:
    with_retries(lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True),
                 f"Creating {repo_type} repo {repo_id}")
    if revision and revision != "main":
        with_retries(lambda: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True),
                     f"Creating branch {revision} of {repo_id}")


def push_dataset(path, repo_id, *, config_name=None, private=False, revision=None, commit_message=None, token=None):
    """Push a generated (or saved) SSO dataset as config `config_name` (default `iteration_<t>` from its summary, else
    `default`) and write its dataset card, keeping the `configs` of earlier pushes. Returns the repo URL."""
    import datasets

    from .cards import sso_dataset_card

    folder, summary = _dataset_folder(Path(path))
    dataset = datasets.load_from_disk(str(folder))
    if config_name is None:
        iteration = (summary or {}).get("settings", {}).get("iteration")
        config_name = f"iteration_{iteration}" if iteration else "default"
    api = _api(token)
    _ensure_repo(api, repo_id, "dataset", private, revision)
    message = commit_message or f"Add SSO dataset config {config_name}"
    with_retries(lambda: dataset.push_to_hub(repo_id, config_name=config_name, private=private, revision=revision,
                                             commit_message=message, token=token),
                 f"Pushing dataset {repo_id} ({config_name})")

    def update_card():
        from huggingface_hub import DatasetCard

        from huggingface_hub import hf_hub_download

        readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision, token=token)
        existing = DatasetCard.load(readme)
        card = sso_dataset_card(dataset, summary, repo_id, config_name, existing.data.to_dict())
        card.push_to_hub(repo_id, repo_type="dataset", token=token, revision=revision,
                         commit_message=f"Update dataset card for {config_name}")

    with_retries(update_card, f"Updating the dataset card of {repo_id}")
    return f"{api.endpoint}/datasets/{repo_id}"


def push_folder(path, repo_id, *, kind=None, private=False, revision=None, commit_message=None, token=None):
    """Push a model, adapter or reward-model folder with its card (the SSO card SSOTrainer wrote, or one rendered from
    the folder's metadata). Returns the repo URL."""
    from .cards import folder_card

    path = Path(path)
    kind = kind or detect_artifact(path)
    card = folder_card(path, kind, repo_id)
    api = _api(token)
    _ensure_repo(api, repo_id, "model", private, revision)
    ignore = ["training_args.bin", "checkpoint-*", "checkpoint-*/*", "runs/*", "*.lock", ".*"]

    def upload():
        api.upload_folder(folder_path=str(path), repo_id=repo_id, revision=revision, ignore_patterns=ignore + ["README.md"],
                          commit_message=commit_message or f"Upload SSO {kind.replace('_', ' ')}")
        if card is not None:
            card.push_to_hub(repo_id, token=token, revision=revision, commit_message="Update model card")

    with_retries(upload, f"Pushing {kind.replace('_', ' ')} {repo_id}")
    return f"{api.endpoint}/{repo_id}"


def push(path, repo_id, *, config_name=None, private=False, revision=None, commit_message=None, token=None) -> str:
    """Publish whatever `path` holds (see `detect_artifact`) with the right card. Returns the repo URL."""
    kind = detect_artifact(path)
    if kind == "dataset":
        return push_dataset(path, repo_id, config_name=config_name, private=private, revision=revision,
                            commit_message=commit_message, token=token)
    if config_name is not None:
        raise ValueError("`config_name` applies to datasets only; for models use `revision` (a branch) instead.")
    return push_folder(path, repo_id, kind=kind, private=private, revision=revision, commit_message=commit_message,
                       token=token)


# ----------------------------------------------------------------------------------------------------------------------
# Pulling


def load_sso_dataset(repo_id: str, config_name: str | None = None, split: str = "train", revision: str | None = None,
                     conversational: bool = True, token: str | None = None) -> Any:
    """Load a published SSO dataset in the canonical schema: datasets published by trl-sso as they are, datasets in
    the public reference formats (v1 `instruction`/`raw`, v2 `from`/`value` turns) converted."""
    import datasets

    dataset = with_retries(
        lambda: datasets.load_dataset(repo_id, config_name, split=split, revision=revision, token=token),
        f"Loading dataset {repo_id}",
    )
    return to_canonical(dataset, conversational)


def to_canonical(dataset, conversational: bool = True):
    """`dataset` unchanged when it has the SSO columns or is plain preference data; converted when it is in one of
    the public reference formats."""
    from .data import CHOSEN, PROMPT, SSO_COLUMNS, convert_reference_dataset

    columns = set(dataset.column_names)
    if set(SSO_COLUMNS) <= columns or not {"p_system", "n_system"} <= columns:
        return dataset
    if not ({"instruction", "raw"} <= columns or {PROMPT, CHOSEN, "raw"} <= columns):
        return dataset
    return convert_reference_dataset(dataset, conversational=conversational)
