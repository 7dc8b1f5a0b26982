"""The sampler of a policy, the one place a command picks it: vLLM with `use_vllm` (`trl_sso.generation.vllm`),
else transformers' `generate` (`trl_sso.generation.samplers`)."""

from ..models import load_chat_model, require_chat_template
from ..names import DEFAULT_MODEL_ID
from ..offline import default_model_path
from .samplers import TransformersSampler
from .vllm import VLLMEngine


def policy_sampler(options, model_name: str, batch_size: int, engine=None, **load):
    """`(sampler, tokenizer)` of the policy `model_name`, the one place a command picks its sampler: with `use_vllm`,
    vLLM over `engine` (the run's `trl_sso.generation.vllm.VLLMEngine`, made on the first call when None: the caller
    then holds it in `sampler.engine`); else transformers' `generate` on the model, `batch_size` prompts a batch.
    `load`: `dtype`, `revision`, `trust_remote_code` and `chat` (`trl_sso.models.load_chat_model`)."""
    if not getattr(options, "use_vllm", False):
        model, tokenizer = load_chat_model(model_name, **load)
        return TransformersSampler(model, tokenizer, batch_size, options.sampling_kwargs()), tokenizer
    from transformers import AutoTokenizer

    path = default_model_path() if model_name == DEFAULT_MODEL_ID else model_name
    revision, trust_remote_code = load.get("revision", "main"), load.get("trust_remote_code", False)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if load.get("chat", True):
        require_chat_template(tokenizer, model_name)
    engine = engine or VLLMEngine(options)
    return engine.sampler(path, tokenizer, revision, trust_remote_code), tokenizer
