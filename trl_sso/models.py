"""Loading a chat model for sampling, scoring or judging: the one place that reads a model and its tokenizer from a
path or Hub id (the packaged SmolLM2's Hub id loads the packaged copy), at a revision, with `trust_remote_code`, in
evaluation mode on the process's device (fp32 on a CPU for `auto`: checkpoints stored in bf16 run many times slower
there). A model that does not load is a `ValueError` that names it and the fix."""

from .names import DEFAULT_MODEL_ID
from .offline import default_model_path
from .runtime import process_state


def require_chat_template(tokenizer, model_name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The tokenizer of {model_name!r} has no chat template, so the principle cannot be given as a system "
            "message. Use an instruction-tuned (chat) model, or set `tokenizer.chat_template` before generating."
        )


def load_chat_model(
    name: str,
    dtype: str = "auto",
    device=None,
    revision: str = "main",
    trust_remote_code: bool = False,
    chat: bool = True,
):
    """`(model, tokenizer)` of `name` (see the module docstring); `chat` requires a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or process_state().device
    path = default_model_path() if name == DEFAULT_MODEL_ID else name
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    if torch_dtype == "auto" and device.type == "cpu":
        torch_dtype = torch.float32
    options = dict(revision=revision, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **options)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"The model {name!r} could not be loaded ({first}). Pass a model path or Hub id with `--model`."
        ) from error
    if chat:
        require_chat_template(tokenizer, name)
    return model.to(device).eval(), tokenizer
