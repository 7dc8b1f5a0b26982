"""Known third-party noise of a first run, silenced narrowly under the `trl-sso` command: each filter matches one
message of one library, so every other warning still shows.

- bitsandbytes' CPU backend logs, when it is imported, that the optional `kernels` package is missing; its 4-bit
  layers work without it.
- DeepSpeed, which accelerate imports when it unwraps a model to save it (whenever DeepSpeed is installed, used or
  not), warns that it found no GPU and picked the CPU. On a machine without an accelerator trl-sso names the CPU to it
  (`DS_ACCELERATOR=cpu`, its own setting), which is what it would pick, without the warning.
- transformers warns that `gradient_checkpointing` is renamed `activation_checkpointing`; TRL 1.16's configs (and so
  `SSOConfig`) still use the old name, which users cannot change.
"""

import logging
import os
import warnings


BITSANDBYTES_LOGGER = "bitsandbytes.backends.cpu.ops"
BITSANDBYTES_NOISE = "Failed to load CPU gemm_4bit_forward from kernels-community"
CHECKPOINTING_NOISE = r"`(is_)?gradient_checkpointing` is deprecated and will be removed in v6"


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_known_noise(training: bool = False) -> None:
    """Install the filters (once), before the libraries are imported; `training` commands also set DeepSpeed's
    accelerator on machines without one (this imports torch)."""
    logger = logging.getLogger(BITSANDBYTES_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(BITSANDBYTES_NOISE))
    warnings.filterwarnings("ignore", message=CHECKPOINTING_NOISE, category=FutureWarning)
    if training and "DS_ACCELERATOR" not in os.environ:
        from .runtime import accelerator_available

        if not accelerator_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
