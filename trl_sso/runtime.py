"""Where this process runs: which accelerator there is, whether bf16 runs at full speed on it, and this process's
place in an `accelerate launch` run, and how the other processes wait for work the main process does alone. Read by
the training configs, the generator and the scripts alike."""

import time
from pathlib import Path


def accelerator_available() -> bool:
    """Whether this machine has an accelerator torch can train on (CUDA, XPU, NPU, MPS or XLA)."""
    import torch
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available
    from transformers.utils import is_torch_xla_available

    return (
        torch.cuda.is_available()
        or is_xpu_available()
        or is_npu_available()
        or is_mps_available()
        or is_torch_xla_available()
    )


def bf16_available() -> bool:
    """Whether this machine has an accelerator on which bf16 mixed precision runs at full speed."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return is_torch_bf16_gpu_available() or is_torch_xla_available()


def process_state():
    """This process's `accelerate.PartialState`. On a machine without an accelerator, accelerate forms a multi-process
    (gloo) group only when asked for the CPU explicitly, so ask for it then."""
    from accelerate import PartialState

    return PartialState(cpu=not accelerator_available())


def wait_for_main(state, done: Path, poll_seconds: float = 2.0) -> None:
    """Wait, on every process, for work the main process does alone, which ends by writing the file `done`.

    A barrier is a collective, and a collective fails after the process group's timeout (30 minutes by default), so
    the other processes must not sit in a barrier while the main process evaluates or merges for longer. They watch
    for `done` instead, and all processes then meet at a barrier that returns at once. (Should the main process die,
    the launcher ends the others.) The caller makes sure that `done` does not exist before the work starts."""
    if not state.is_main_process:
        while not done.exists():
            time.sleep(poll_seconds)
    state.wait_for_everyone()
