"""Scores from a sequence-classification reward model (e.g. one trained by `trl-sso reward`): the reward of a
response to its plain prompt, as TRL's `RewardTrainer` reads a pair (chat template over prompt and response)."""

from collections.abc import Mapping

from ..data import CHOSEN, ORIGINAL, PROMPT, REJECTED
from .intervals import wilson


def load_reward_model(name: str):
    """`(model, tokenizer)` of a reward model (a full model or a PEFT adapter folder); a `ValueError` naming the fix
    when it does not load."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model, info = AutoModelForSequenceClassification.from_pretrained(name, output_loading_info=True)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"The reward model {name!r} could not be loaded ({first}). Pass a sequence-classification model "
            "(e.g. the output folder of `trl-sso reward`) with `--reward_model`."
        ) from error
    if _untrained_head(name, info):
        raise ValueError(
            f"{name!r} has no trained score head: it is not a reward model (a causal LM loads with a random head, "
            "whose rewards mean nothing). Pass a sequence-classification model, e.g. the output folder of "
            "`trl-sso reward`, with `--reward_model`."
        )
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _untrained_head(name: str, loading_info: dict) -> bool:
    """Whether the score head of the model loaded from `name` was initialised at random: for an adapter, one not
    trained for sequence classification; for a full model, one whose checkpoint holds no head weights."""
    try:
        from peft import PeftConfig

        adapter = PeftConfig.from_pretrained(name)
    except Exception:  # not an adapter (PEFT raises ValueError or OSError, depending on where `name` points)
        adapter = None
    if adapter is not None:
        return str(getattr(adapter.task_type, "value", adapter.task_type)) != "SEQ_CLS"
    return any({"score", "classifier"} & set(key.split(".")) for key in loading_info.get("missing_keys", []))


def _text(tokenizer, prompt, response) -> str:
    if isinstance(prompt, str):
        return prompt + (response if isinstance(response, str) else response[-1]["content"])
    messages = prompt + (response if isinstance(response, list) else [{"role": "assistant", "content": response}])
    return tokenizer.apply_chat_template(messages, tokenize=False)


def rewards(model, tokenizer, pairs: list[tuple], batch_size: int = 8) -> list[float]:
    """The reward of each `(prompt, response)` in `pairs`."""
    import torch

    scores = []
    for start in range(0, len(pairs), batch_size):
        texts = [_text(tokenizer, p, r) for p, r in pairs[start : start + batch_size]]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            scores += model(**inputs).logits[:, 0].float().tolist()
    return scores


def reward_report(model, tokenizer, records: list[Mapping], batch_size: int = 8) -> dict:
    """The share of records with r(y+) > r(y-) (with its Wilson interval), and the mean reward of y+, y- and y_o."""
    columns = [c for c in (CHOSEN, REJECTED, ORIGINAL) if c in records[0]]
    scores = {c: rewards(model, tokenizer, [(r[PROMPT], r[c]) for r in records], batch_size) for c in columns}
    wins = [a > b for a, b in zip(scores[CHOSEN], scores[REJECTED])]
    return {
        "chosen_wins": sum(wins) / len(wins),
        "chosen_wins_ci95": wilson(sum(wins), len(wins)),
        "mean_reward": {c: sum(v) / len(v) for c, v in scores.items()},
    }
