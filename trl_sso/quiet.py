"""Known third-party noise of a first run, silenced narrowly under the `trl-sso` command: each filter matches one
message of one library, so every other warning still shows.

- bitsandbytes' CPU backend tries, when it is imported, to fetch a faster 4-bit kernel from the Hub through the
  `kernels` package, and logs that it failed (the package is missing, the Hub is offline, or the publisher could not
  be verified); its 4-bit layers work without it. Since transformers 5.25 requires `kernels`, the attempt also makes
  `kernels` log that it skipped the publisher check of that one repository in offline mode.
- DeepSpeed, which accelerate imports when it unwraps a model to save it (whenever DeepSpeed is installed, used or
  not), warns that it found no GPU and picked the CPU. On a machine without an accelerator trl-sso names the CPU to it
  (`DS_ACCELERATOR=cpu`, its own setting), which is what it would pick, without the warning.
- transformers warns that `gradient_checkpointing` is renamed `activation_checkpointing`: TRL 1.16's configs (and so
  `SSOConfig`) still use the old field name, which users cannot change, and TRL's and PEFT's model preparation still
  call `gradient_checkpointing_enable` / `_disable` (deprecated in transformers 5.25). trl-sso's own code calls the
  new names.
"""

import logging
import os
import warnings


# logger name -> the start of the one message dropped from it
NOISY_LOGGERS = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}
CHECKPOINTING_NOISE = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated and will be removed in v6"


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_known_noise(training: bool = False) -> None:
    """Install the filters (once), before the libraries are imported; `training` commands also set DeepSpeed's
    accelerator on machines without one (this imports torch)."""
    for name, start in NOISY_LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage(start))
    warnings.filterwarnings("ignore", message=CHECKPOINTING_NOISE, category=FutureWarning)
    if training and "DS_ACCELERATOR" not in os.environ:
        from .runtime import accelerator_available

        if not accelerator_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
