"""Logging under the `trl-sso` command: the messages of trl-sso's modules (the `trl_sso.*` loggers: progress over
rounds and stages, resumes, retries) go to stderr at level INFO on the main process and WARNING on the others, as
TRL's scripts log; `--log_level` (and `--log_level_replica` for training commands) set them. Used as a library,
trl-sso configures nothing: its messages follow the application's own logging set-up.
"""

import dataclasses
import logging
import os
import sys


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclasses.dataclass
class LoggingArguments:
    """The logging option of the commands that do not train (training commands take TRL's `--log_level`)."""

    log_level: str = dataclasses.field(
        default="info",
        metadata={"help": "Level of trl-sso's messages on the main process.", "choices": list(LEVELS)},
    )


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to the `sys.stderr` of the moment (which a caller may have replaced since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: str | None = None, replica_level: str | None = None) -> None:
    """Send the `trl_sso` loggers to stderr at `level` on the main process (default INFO) and `replica_level` on the
    others (default WARNING). TRL's levels `passive` (leave as is: here, the default) and `detail` (DEBUG) are
    accepted. Calling it again changes the levels and adds no second handler."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    chosen = (level if is_main else replica_level) or "passive"
    chosen = {"passive": "info" if is_main else "warning", "detail": "debug", "critical": "error"}.get(chosen, chosen)
    logger = logging.getLogger("trl_sso")
    logger.setLevel(LEVELS[chosen])
    if not any(getattr(handler, "trl_sso", False) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.trl_sso = True
        handler.setFormatter(logging.Formatter("[trl-sso] %(message)s"))
        logger.addHandler(handler)
