"""Sampling behind one interface: `sample(prompts, temperature, top_p, max_new_tokens, seed)`, and `mean_logps` for
the log-probability filter.

- `TransformersSampler` (default): batched `model.generate`, left-padded, prompts bucketed by length so that a batch
  carries little padding, KV cache on, seeded per batch so that the result of a batch depends only on its content.
- vLLM (`use_vllm`, GPUs): `trl_sso.generation.vllm`, the same interface over TRL's vLLM integration.

Prompts are message lists; the chat template turns them into text. Each result is a `Completion`.
"""

from dataclasses import dataclass

from ..data import render


@dataclass
class Completion:
    text: str
    num_tokens: int
    finished: bool  # ended with an end-of-sequence token rather than at `max_new_tokens`


class TransformersSampler:
    """Batched sampling with transformers `generate`."""

    def __init__(self, model, tokenizer, batch_size: int = 8, generation_kwargs: dict | None = None):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.generation_kwargs = dict(generation_kwargs or {})  # more keyword arguments of `generate`
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids | {self.tokenizer.eos_token_id}

    def sample(
        self,
        prompts: list[list[dict]],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
        desc: str | None = None,
    ):
        """Complete each chat of `prompts`; with `desc`, a progress bar over the batches."""
        import torch
        from tqdm.auto import tqdm

        texts = [render(self.tokenizer, messages) for messages in prompts]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # bucket by length: little padding per batch
        results: list[Completion | None] = [None] * len(texts)
        starts = range(0, len(order), self.batch_size)
        for chunk_index, start in enumerate(tqdm(starts, desc=desc, unit="batch", disable=desc is None)):
            chunk = order[start : start + self.batch_size]
            inputs = self.tokenizer(
                [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.model.device)
            torch.manual_seed(seed * 1_000 + chunk_index)
            settings = dict(
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None,
                top_k=None,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
            )
            settings.update(self.generation_kwargs)  # the user's `generation_kwargs` win, as in TRL's trainers
            with torch.no_grad():
                output = self.model.generate(**inputs, **settings)
            new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
            for i, tokens in zip(chunk, new_tokens):
                end = next((j for j, t in enumerate(tokens) if t in self.eos_ids), None)
                kept = tokens if end is None else tokens[:end]
                text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
                results[i] = Completion(text=text, num_tokens=len(kept), finished=end is not None)
        return results

    def mean_logps(self, prompts: list[list[dict]], responses: list[list[str]]) -> list[list[float]]:
        """The log-prob filter's scores (`response_mean_logps`), each prompt forwarded once for all its responses
        (`trl_sso.sharing`)."""
        from ..sharing import completion_logps

        pad = self.tokenizer.pad_token_id
        return response_mean_logps(
            self.tokenizer, prompts, responses, lambda rows: completion_logps(self.model, rows, pad, self.batch_size)
        )


def response_mean_logps(tokenizer, prompts, responses, score) -> list[list[float]]:
    """Token-mean log-probability of each response of `responses[i]` after `prompts[i]` (teacher forcing), for the
    log-prob filter of every sampler: tokenized as the trainer tokenizes a pair (`trl_sso.tokens`, the response as an
    assistant turn with its end-of-turn token), then scored by `score` (rows of `(prompt_ids, [completion_ids])` to
    `(summed log-prob, tokens)` per completion: `trl_sso.sharing.completion_logps` or vLLM's)."""
    from ..tokens import tokenize_completions

    rows = [
        tokenize_completions(tokenizer, prompt, [[{"role": "assistant", "content": r}] for r in rs])
        for prompt, rs in zip(prompts, responses, strict=True)
    ]
    return [[total / max(count, 1) for total, count in row] for row in score(rows)]
