"""`trl-sso env`: the versions and the machine to paste into a bug report, as TRL's `trl env` prints them."""

import platform
from importlib.metadata import PackageNotFoundError, version


PACKAGES = (
    "trl-sso", "trl", "transformers", "datasets", "huggingface_hub", "peft", "accelerate", "bitsandbytes", "torch",
    "vllm", "if-verifiable",
)  # fmt: skip


def installed_version(package: str) -> str:
    """The installed release of `package`, or "not installed"."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def accelerator() -> str:
    """The accelerator torch sees: CUDA devices by name, XPU, MPS, or the CPU."""
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"CUDA {torch.version.cuda}: " + ", ".join(names)
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return f"XPU ({torch.xpu.device_count()} devices)"
    if torch.backends.mps.is_available():
        return "MPS"
    return "none (CPU)"


def environment() -> dict[str, str]:
    """Platform, Python, the versions of trl-sso and the libraries it runs on, and the accelerator."""
    info = {"Platform": platform.platform(), "Python version": platform.python_version()}
    info.update({f"{package} version": installed_version(package) for package in PACKAGES})
    torch_installed = installed_version("torch") != "not installed"
    info["Accelerator"] = accelerator() if torch_installed else "unknown (torch not installed)"
    return info


def main() -> int:
    print("Copy-paste the following information when reporting an issue:\n")
    print("\n".join(f"- {key}: {value}" for key, value in environment().items()))
    return 0
