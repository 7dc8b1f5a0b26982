"""trl-sso: Self-Steering Optimization (arXiv 2410.17131) for Hugging Face TRL.

The public API is imported lazily, so `import trl_sso` (and the `trl-sso` command's help) stays light: torch and TRL
load on first use of `SSOConfig` or `SSOTrainer`.
"""

from importlib import import_module
from typing import TYPE_CHECKING


__version__ = "0.1.0"

_LAZY = {
    "SSOConfig": "trl_sso.config",
    "SSOTrainer": "trl_sso.trainer",
    "DataCollatorForSSO": "trl_sso.trainer",
    "OnlineSSOConfig": "trl_sso.online_config",
    "OnlineSSOTrainer": "trl_sso.online_trainer",
    "feature_rewards": "trl_sso.signal.reward_functions",
    "sso_loss": "trl_sso.loss",
    "PairLogps": "trl_sso.loss",
    "build_steered_prompt": "trl_sso.data",
    "load_sso_dataset": "trl_sso.data",
    "make_record": "trl_sso.data",
    "validate_dataset": "trl_sso.data",
    "convert_reference_dataset": "trl_sso.data",
    "from_reference_record": "trl_sso.data",
    "SSODataError": "trl_sso.data",
    "GenerateArguments": "trl_sso.generation",
    "SSOGenerator": "trl_sso.generation",
    "generate": "trl_sso.generation",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from .config import SSOConfig
    from .data import (
        SSODataError,
        build_steered_prompt,
        convert_reference_dataset,
        from_reference_record,
        load_sso_dataset,
        make_record,
        validate_dataset,
    )
    from .generation import GenerateArguments, SSOGenerator, generate
    from .loss import PairLogps, sso_loss
    from .online_config import OnlineSSOConfig
    from .online_trainer import OnlineSSOTrainer
    from .signal.reward_functions import feature_rewards
    from .trainer import DataCollatorForSSO, SSOTrainer


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trl_sso' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
