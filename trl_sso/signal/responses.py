"""Responses as the signal code reads them: the text of a response column, the text compared for equality, and the
verdict on a pair from its two scores. Shared by the signal report, the judge and the generator's filters."""

import re
from collections import Counter
from typing import Any

from .intervals import wilson


# Leading labels a model may put before its answer ("Helpful Response:", "**Answer:**", "Good answer -")
_LABEL = re.compile(
    r"^\s*[*_#>\s]*(?:[\w'-]+\s+){0,3}(?:response|answer|reply)\s*[*_]*\s*[:\-–]\s*[*_]*\s*", re.IGNORECASE
)


def response_text(value: Any) -> str:
    """The text of a response column: a string, or the contents of the assistant turns of a message list."""
    if isinstance(value, str):
        return value
    return "\n".join(m["content"] for m in value or [] if m.get("role") == "assistant" and m.get("content"))


def normalize(text: str) -> str:
    """The response without a leading label, case and surrounding whitespace, for equality checks (the generator's
    filters and the degeneracy report)."""
    return " ".join(_LABEL.sub("", text, count=1).split()).lower()


def outcome(plus: float, minus: float) -> str:
    """The verdict on a pair from the scores of y+ and y- on the good side: `correct`, `tie` or `wrong`."""
    return "correct" if plus > minus else "tie" if plus == minus else "wrong"


def outcome_shares(outcomes: Counter) -> dict:
    """The number of pairs and the share of each verdict (`correct`, `tie`, `wrong`) with its Wilson interval."""
    total = sum(outcomes.values())
    row = {"pairs": total}
    for key in ("correct", "tie", "wrong"):
        row[key], row[f"{key}_ci95"] = outcomes[key] / total, wilson(outcomes[key], total)
    return row
