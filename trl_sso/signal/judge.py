"""A pairwise judge for the accuracy of SSO pairs on any feature, qualitative ones included: which of y+ and y-
better shows the feature's meaning? This is how the paper measures accuracy (a judge model, both orders).

Each (record, feature) is asked twice, with y+ as answer A and then as answer B. The pair is *correct* when both
verdicts prefer y+, *wrong* when both prefer y-, and a *tie* when the verdict follows the position (or an answer was
unreadable). The share of verdicts for answer A is the judge's position bias (0.5: none).

Two backends, one question:
- `LocalJudge`: a causal LM loaded with transformers; its verdict is whichever of the tokens `A` and `B` has the
  higher log-probability as the first token of its reply (no sampling, so the verdicts are reproducible);
- `EndpointJudge`: any OpenAI-compatible chat endpoint (`vllm serve`, TGI, Inference Providers) through
  `huggingface_hub.InferenceClient(base_url=...)`, at temperature 0; the first `A` or `B` of the reply is the verdict.

On verifiable features the judge's verdicts are compared with the checkers' (`agreement_with_checkers`): read that
figure before trusting its verdicts on qualitative features.
"""

import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from ..data import CHOSEN, PROMPT, REJECTED, render
from ..names import public_name
from ..retries import is_transient
from .intervals import wilson, with_interval
from .onpolicy import load_policy
from .responses import outcome as checked_outcome
from .responses import outcome_shares, response_text


# A judge whose replies are mostly unreadable makes ties of its own: past this share of verdicts, the report fails
MAX_UNREADABLE_SHARE = 0.25

QUESTION = (
    "Two assistants answered the same request. Judge them on one quality only.\n\n"
    "Quality: {meaning}\n\n"
    "Request:\n{request}\n\n"
    "[Answer A]\n{first}\n[End of answer A]\n\n"
    "[Answer B]\n{second}\n[End of answer B]\n\n"
    "Which answer shows this quality better? Reply with one letter: A or B."
)


def judge_messages(request: str, meaning: str, first: str, second: str) -> list[dict]:
    """The chat the judge answers: one user turn asking for `A` or `B`."""
    text = QUESTION.format(meaning=meaning, request=request, first=first, second=second)
    return [{"role": "user", "content": text}]


def _request_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m.get("role") == "user")


class LocalJudge:
    """A causal LM as judge: the verdict is the likelier of the tokens `A` and `B` after the question."""

    def __init__(self, model, tokenizer, batch_size: int = 8, name: str = "local model"):
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name
        self.letters = [tokenizer.encode(letter, add_special_tokens=False)[0] for letter in ("A", "B")]

    def verdicts(self, questions: Sequence[list[dict]]) -> list[str | None]:
        """`"A"` or `"B"` for each chat in `questions` (`None` never: the two log-probabilities always compare)."""
        import torch

        texts = [render(self.tokenizer, messages) for messages in questions]
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"
        verdicts = []
        try:
            for start in range(0, len(texts), self.batch_size):
                inputs = self.tokenizer(
                    texts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(self.model.device)
                # left padding: positions count from each question's first token, as without padding
                positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                with torch.no_grad():
                    last = self.model(**inputs, position_ids=positions).logits[:, -1, :].float()
                a, b = last[:, self.letters[0]], last[:, self.letters[1]]
                verdicts += ["A" if x >= y else "B" for x, y in zip(a.tolist(), b.tolist())]
        finally:
            self.tokenizer.padding_side = side
        return verdicts


class EndpointJudge:
    """An OpenAI-compatible chat endpoint as judge, through `huggingface_hub.InferenceClient(base_url=...)`.

    Each request waits at most `timeout` seconds; a time-out or a transient failure (HTTP 5xx, 429, a dropped
    connection) is retried `retries` times with a growing pause, then ends the run in one line naming the endpoint.
    A reply without a readable `A` or `B` (empty, malformed, or naming neither) is an unreadable verdict: counted, and
    the first such reply kept (`first_unreadable`) for `judge_report`'s message."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        token: str | None = None,
        max_tokens: int = 8,
        timeout: float = 60.0,
        retries: int = 2,
    ):
        from huggingface_hub import InferenceClient, constants

        self.local = urlparse(base_url).hostname in ("127.0.0.1", "localhost", "::1")
        if constants.HF_HUB_OFFLINE and not self.local:
            raise ValueError(
                f"The judge endpoint {base_url} is on the network, but HF_HUB_OFFLINE is set. Unset HF_HUB_OFFLINE, "
                "or serve the judge on this machine (e.g. `vllm serve MODEL` and `--judge http://127.0.0.1:8000/v1`)."
            )
        self.client = InferenceClient(base_url=base_url, token=token, timeout=timeout)
        self.model, self.max_tokens, self.base_url = model, max_tokens, base_url
        self.timeout, self.retries = timeout, retries
        self.name = f"{model or 'endpoint'} at {base_url}"
        self.first_unreadable: str | None = None

    def _ask(self, messages):
        for attempt in range(self.retries + 1):
            try:
                return self.client.chat_completion(
                    messages, model=self.model, max_tokens=self.max_tokens, temperature=0.0
                )
            except Exception as error:  # the client's HTTP, time-out and connection errors: one line, no stack trace
                if attempt < self.retries and is_transient(error):
                    time.sleep(2**attempt)
                    continue
                raise ValueError(
                    f"The judge endpoint {self.base_url} did not answer ({type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else 'no message'}; {attempt + 1} tries of at most "
                    f"{self.timeout:g} s). Check that the server runs and serves an OpenAI-compatible "
                    "`/v1/chat/completions`, `--judge_model` if it serves several models, and `--judge_timeout` for "
                    "a slow one."
                ) from error
        raise AssertionError("unreachable")

    def verdicts(self, questions: Sequence[list[dict]]) -> list[str | None]:
        """`"A"`, `"B"`, or `None` for a reply that is empty, malformed or names neither."""
        verdicts = []
        with _online_for(self.local):
            for messages in questions:
                reply = self._ask(messages)
                text = _reply_text(reply)
                match = re.search(r"\b([AB])\b", text or "")
                verdicts.append(match.group(1) if match else None)
                if not match and self.first_unreadable is None:
                    self.first_unreadable = repr(text if text is not None else reply)[:200]
        return verdicts


def _reply_text(reply) -> str | None:
    """The text of a chat completion's first choice, or None when the reply has none (no choices, no message)."""
    try:
        return reply.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


@contextmanager
def _online_for(local: bool):
    """A server on this machine is no network access: huggingface_hub's offline mode, which refuses every request of
    the library, is lifted for the judge's calls to it, and restored after them."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved and not local
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def make_judge(
    spec: str, model_name: str | None = None, token: str | None = None, batch_size: int = 8, timeout: float = 60.0
):
    """A judge from `--judge`: an `http(s)://` URL is an OpenAI-compatible endpoint (`model_name` picks its model,
    `timeout` bounds each request), anything else a causal LM to load (a path or Hub id)."""
    if spec.startswith(("http://", "https://")):
        return EndpointJudge(spec, model_name, token, timeout=timeout)

    model, tokenizer = load_policy(spec)
    return LocalJudge(model, tokenizer, batch_size, name=public_name(spec))


def judge_report(judge, records: Sequence[Mapping], features: Mapping[str, Any]) -> dict:
    """Judge y+ against y- in both orders for each (record, feature) pair (see the module docstring).

    Returns the accuracy over all pairs, on qualitative features and per feature; the position bias; and, on
    verifiable features, the share of the pairs the checker decides (y+ and y- score differently) where the judge
    reaches the same verdict (a judge tie counts as a disagreement)."""
    items, questions = [], []
    for record in records:
        request = _request_text(record[PROMPT])
        plus, minus = response_text(record[CHOSEN]), response_text(record[REJECTED])
        for name in record.get("features") or []:
            feature = features.get(name)
            if feature is None:
                continue
            items.append((name, feature, plus, minus))
            questions.append(judge_messages(request, feature.meaning, plus, minus))  # y+ is A
            questions.append(judge_messages(request, feature.meaning, minus, plus))  # y+ is B
    if not items:
        raise ValueError("No record names a known feature, so there is nothing to judge.")
    verdicts = judge.verdicts(questions)
    outcomes: dict[str, Counter] = {}
    agreement = Counter()
    for (name, feature, plus, minus), first, second in zip(items, verdicts[::2], verdicts[1::2]):
        judged = "correct" if (first, second) == ("A", "B") else "wrong" if (first, second) == ("B", "A") else "tie"
        outcomes.setdefault(name, Counter())[judged] += 1
        if feature.checker is not None:
            checked = checked_outcome(feature.checker(plus), feature.checker(minus))
            if checked != "tie":
                agreement["agree" if judged == checked else "disagree"] += 1
    readable = [v for v in verdicts if v is not None]
    unreadable = len(verdicts) - len(readable)
    if unreadable > MAX_UNREADABLE_SHARE * len(verdicts):
        raise ValueError(
            f"The judge {judge.name} gave {unreadable} unreadable verdicts of {len(verdicts)} (more than "
            f"{MAX_UNREADABLE_SHARE:.0%}: no 'A' or 'B' in its reply), so its figures would mostly be ties of its own "
            f"making. Its first such reply: {getattr(judge, 'first_unreadable', None)}. Check that it follows the "
            "question's instruction to reply with one letter (a chat model, its chat template, `--judge_model`)."
        )
    qualitative = Counter()
    for name, counter in outcomes.items():
        if features[name].checker is None:
            qualitative.update(counter)
    decided = sum(agreement.values())
    return {
        "judge": judge.name,
        "verdicts": len(verdicts),
        "unreadable_verdicts": unreadable,
        "overall": outcome_shares(sum(outcomes.values(), Counter())),
        "qualitative": outcome_shares(qualitative) if qualitative else None,
        "per_feature": {name: outcome_shares(outcomes[name]) for name in sorted(outcomes)},
        "position_bias": {
            "first_answer_chosen": readable.count("A") / len(readable) if readable else None,
            "first_answer_chosen_ci95": wilson(readable.count("A"), len(readable)),
            "unreadable_verdicts": unreadable,
        },
        "agreement_with_checkers": {
            "pairs": decided,
            "agreement": agreement["agree"] / decided if decided else None,
            "agreement_ci95": wilson(agreement["agree"], decided),
        },
    }


def format_judge(report: dict) -> str:
    """The judge's figures in a few lines, its agreement with the checkers first."""
    agreement, bias = report["agreement_with_checkers"], report["position_bias"]
    lines = [
        f"judge {report['judge']}: agreement with the checkers on {agreement['pairs']} decided verifiable pairs "
        f"{with_interval(agreement['agreement'], agreement['agreement_ci95'])} (0.5 is chance); answer A chosen in "
        f"{with_interval(bias['first_answer_chosen'], bias['first_answer_chosen_ci95'])} of verdicts (0.5: no "
        f"position bias)"
    ]
    if report.get("unreadable_verdicts"):
        lines.append(
            f"  unreadable verdicts (no 'A' or 'B' in the reply, counted as ties): {report['unreadable_verdicts']} of "
            f"{report['verdicts']}"
        )
    for label, row in (("all features", report["overall"]), ("qualitative features", report["qualitative"])):
        if row:
            lines.append(
                f"  judged accuracy, {label} ({row['pairs']} pairs, both orders): y+ better "
                f"{with_interval(row['correct'], row['correct_ci95'])}, tie (order-dependent) {row['tie']:.2f}, "
                f"y- better {row['wrong']:.2f}"
            )
    return "\n".join(lines)
