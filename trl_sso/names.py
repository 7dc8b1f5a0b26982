"""Names and ids, on the ground floor: is this a Hub repo id, how a local path is named where others read it, and the
names of the offline default model and of trl-sso's cache. Light: nothing but the standard library and
`huggingface_hub`'s id validation."""

import os
from pathlib import Path


DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ID = f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"  # the Hub id it was published under, for provenance


def cache_dir() -> Path:
    """Where trl-sso caches converted checkpoints: `$TRL_SSO_CACHE`, else `~/.cache/trl-sso`."""
    return Path(os.environ.get("TRL_SSO_CACHE", Path.home() / ".cache" / "trl-sso"))


def packaged_model_folder() -> Path:
    """Where the packaged default model's converted checkpoint is kept (`trl_sso.offline`; it may not exist yet)."""
    return cache_dir() / DEFAULT_MODEL_NAME


def hub_id(name: str | None) -> str | None:
    """`name` when it is a Hub repo id (`name` or `namespace/name`), `None` for a local path or anything else: a local
    path says nothing to readers of a card or a report. The one rule trl-sso uses to tell them apart. The packaged
    default model's cache folder is `HuggingFaceTB/SmolLM2-135M-Instruct`, the Hub model it was published as."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name and os.path.isdir(name) and Path(name).resolve() == packaged_model_folder().resolve():
        return DEFAULT_MODEL_ID  # the packaged SmolLM2, converted into trl-sso's cache: the Hub model it came from
    if not name or name.startswith((".", "/", "~")) or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def public_name(name: str, parts: int = 1) -> str:
    """How a model or file is named where others read it (cards, reports, summaries, dataset rows): its Hub id, else
    only the last `parts` parts of its local path."""
    return hub_id(name) or "/".join(Path(name).parts[-parts:])


def public_names(names: list[str]) -> list[str]:
    """`public_name` of each of `names`, with as many path parts as it takes to tell them apart."""
    for parts in range(1, max((len(Path(name).parts) for name in names), default=1) + 1):
        shown = [public_name(name, parts) for name in names]
        if len(set(shown)) == len(set(names)):
            return shown
    return shown
