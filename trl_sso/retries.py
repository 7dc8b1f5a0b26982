"""Retrying Hub calls: transient failures (5xx, 429, dropped connections, time-outs) are retried with exponential
backoff; permanent ones (401/403, a missing repo, an unreachable server) become a `HubError` that says what to fix.
Used by loading (`trl_sso.data.load_sso_dataset`) and publishing (`trl_sso.hub`) alike."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar


logger = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_ERRORS = {
    "ConnectError",
    "ReadTimeout",
    "WriteTimeout",
    "ConnectTimeout",
    "RemoteProtocolError",
    "ReadError",
    "ConnectionError",
    "TimeoutError",
    "ConnectionResetError",
}


class HubError(RuntimeError):
    """A Hub call failed for a reason that retrying will not fix. The message says what to fix."""


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _server_gone(error: BaseException) -> bool:
    return "ConnectionRefusedError" in repr(error) or "Connection refused" in str(error)


def is_transient(error: BaseException) -> bool:
    """Whether retrying may fix `error`: a transient HTTP status, a time-out or a dropped connection."""
    status = _status(error)
    if status is not None:
        return status in TRANSIENT_STATUS
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & _TRANSIENT_ERRORS) and not _server_gone(error)


def _describe(error: BaseException) -> str:
    status = _status(error)
    return f"HTTP {status}" if status else type(error).__name__


def _explain(error: BaseException, what: str, advice: str) -> str:
    status = _status(error)
    advice = f" {advice}" if advice else ""
    if status in (401, 403):
        return (
            f"{what} was refused (HTTP {status}): the token is missing, invalid or lacks access to this namespace. "
            f"Log in with `hf auth login` or set HF_TOKEN.{advice}"
        )
    if status == 404:
        return (
            f"{what} failed (HTTP 404): the namespace, repository or revision does not exist or is not visible to "
            f"this token. Check the repo id (`namespace/name`).{advice}"
        )
    if _server_gone(error) or is_transient(error):
        reason = f"the Hub could not be reached ({_describe(error)})"
        return f"{what} failed: {reason}. Check the network or HF_ENDPOINT.{advice}"
    return f"{what} failed: {error}.{advice}"


def with_retries(action: Callable[[], T], what: str, *, advice: str = "", retries: int = 5, backoff: float = 1.0) -> T:
    """Run `action`, retrying transient Hub failures with exponential backoff; turn the others into a `HubError`
    (`what` names the operation, `advice` is added to the message). Errors that are not Hub failures (bugs, bad
    input) pass through unchanged."""
    for attempt in range(retries + 1):
        try:
            return action()
        except Exception as error:  # huggingface_hub / httpx errors, and RuntimeErrors wrapping them
            cause = error
            while cause.__cause__ is not None and _status(cause) is None:
                cause = cause.__cause__
            if _status(cause) is None and not (is_transient(cause) or _server_gone(cause)):
                raise
            if is_transient(cause) and attempt < retries:
                delay = backoff * 2**attempt
                logger.warning(f"{what}: transient error ({_describe(cause)}); retrying in {delay:.1f}s.")
                time.sleep(delay)
                continue
            raise HubError(_explain(cause, what, advice)) from error
    raise AssertionError("unreachable")
