"""One tokenization of a prompt and its responses, the one DPOTrainer applies to a preference pair: chat template for
message lists, EOS for text, and each completion starting where the prompt and prompt+completion token sequences
diverge. The trainer, the on-policy report (`A(x, y)`) and the generator's log-prob filter all tokenize through it, so
they score the same tokens."""

import json
from collections.abc import Sequence

from trl.data_utils import _tokenize, common_prefix_length


def template_kwargs(example: dict) -> dict:
    """The chat-template options of a record: its `tools` (a list, or JSON as DPOTrainer reads it) and its
    `chat_template_kwargs`."""
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return {"tools": tools, **(example.get("chat_template_kwargs") or {})}


def tokenize_completions(
    processing_class, prompt, completions: Sequence, kwargs: dict | None = None
) -> tuple[list[int], list[list[int]]]:
    """The token ids of `prompt` and of each of its `completions` (message lists after a message-list prompt, strings
    after a string prompt), tokenized as DPOTrainer tokenizes a pair; the prompt ends where it ends for all of them."""
    kwargs = kwargs or {}
    if isinstance(prompt, list):
        prompt_ids = _tokenize(processing_class, prompt, add_generation_prompt=True, **kwargs)
        full_ids = [_tokenize(processing_class, prompt + c, **kwargs) for c in completions]
    else:
        eos = getattr(processing_class, "tokenizer", processing_class).eos_token
        prompt_ids = _tokenize(processing_class, prompt)
        full_ids = [_tokenize(processing_class, prompt + c + ("" if c.endswith(eos) else eos)) for c in completions]
    prompt_ids = prompt_ids["input_ids"]
    full_ids = [ids["input_ids"] for ids in full_ids]
    prompt_len = min((common_prefix_length(prompt_ids, ids) for ids in full_ids), default=len(prompt_ids))
    return prompt_ids[:prompt_len], [ids[prompt_len:] for ids in full_ids]


def tokenize_pair(processing_class, prompt, chosen, rejected, kwargs: dict | None = None):
    """The token ids of the prompt, the chosen and the rejected completion of `(prompt; chosen, rejected)`."""
    prompt_ids, (chosen_ids, rejected_ids) = tokenize_completions(processing_class, prompt, (chosen, rejected), kwargs)
    return prompt_ids, chosen_ids, rejected_ids
