"""Run `trl-sso` with FSDP on CPU processes, for the sharding tests: `accelerate launch --config_file fsdp2.yaml
tests/fsdp_on_cpu.py train ...`.

accelerate 1.x turns an FSDP launch into FSDP only for accelerator process groups (MULTI_GPU, MULTI_XPU, ...); on CPU
processes (MULTI_CPU, gloo) it silently trains with DDP instead, although torch's FSDP2 (`fully_shard`) runs on CPU.
This wrapper adds the missing case and nothing else: after accelerate has set up its state, a MULTI_CPU state under an
FSDP launch becomes FSDP with the plugin the launcher configured, so SSOTrainer's sharded path runs for real.
"""

import os
import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin


_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and self.distributed_type == DistributedType.MULTI_CPU
    ):
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    from trl_sso.cli.main import main

    sys.exit(main())
