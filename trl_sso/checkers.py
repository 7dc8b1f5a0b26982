"""Checkers of verifiable features: each scores how well a response follows the *good* side of its feature, from 0.0
(not at all) to 1.0 (fully), so that a program can tell whether y+ beat y- without a judge.

A checker is named in a feature's rule (`CheckRule`, e.g. `{"name": "max_words", "limit": 60}`). Where IFEval's own
checks fit, they are used as IFEval defines them (through the `if-verifiable` package, which ships Google's IFEval
checkers without the benchmark harness): `max_words` (`length_constraints:number_words`), `keyword`
(`keywords:existence`), `json` (`detectable_format:json_format`) and `ends_with` (`startend:end_checker`). The others
cover what IFEval does not check as such: a bulleted list of at least N items (IFEval counts an exact number),
a first line that opens with a phrase (IFEval's constrained start matches any line), and lowercase text (IFEval ties
it to language detection, which is random on short texts).
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any


_BULLET = re.compile(r"^\s*(?:[*\-•]|\d+[.)])\s+\S", re.MULTILINE)


@cache
def _ifeval(kind: str, **args) -> Any:
    """One IFEval instruction checker, built with its arguments."""
    from if_verifiable.ifeval import instructions

    checker = getattr(instructions, kind)(kind)
    checker.build_description(**args)
    return checker


def max_words(response: str, limit: int) -> float:
    """At most `limit` words (IFEval's word count)."""
    return float(_ifeval("NumberOfWords", num_words=limit + 1, relation="less than").check_following(response))


def keyword(response: str, word: str) -> float:
    """`word` appears (case-insensitive)."""
    return float(_ifeval("KeywordChecker", keywords=(re.escape(word),)).check_following(response))


def json_object(response: str) -> float:
    """The whole response is valid JSON (code fences allowed)."""
    return float(_ifeval("JsonFormat").check_following(response))


def ends_with(response: str, phrase: str) -> float:
    """The response ends with `phrase` (case-insensitive)."""
    return float(_ifeval("EndChecker", end_phrase=phrase).check_following(response))


def bullet_list(response: str, min_items: int) -> float:
    """At least `min_items` bulleted (`*`, `-`, `•`) or numbered lines."""
    return float(len(_BULLET.findall(response)) >= min_items)


def starts_with(response: str, phrase: str) -> float:
    """The first non-empty line opens with `phrase` (case-insensitive, markdown emphasis ignored)."""
    first = next((line for line in response.splitlines() if line.strip()), "")
    return float(first.strip().lstrip("*_# ").lower().startswith(phrase.lower()))


def lowercase(response: str) -> float:
    """Every letter is lowercase (and there is at least one letter)."""
    return float(any(c.isalpha() for c in response) and response == response.lower())


# Every checker a rule can name, with the arguments it takes
CHECKERS: dict[str, tuple[Callable[..., float], tuple[str, ...]]] = {
    "max_words": (max_words, ("limit",)),
    "keyword": (keyword, ("word",)),
    "json": (json_object, ()),
    "ends_with": (ends_with, ("phrase",)),
    "bullet_list": (bullet_list, ("min_items",)),
    "starts_with": (starts_with, ("phrase",)),
    "lowercase": (lowercase, ()),
}
_ARGUMENT_TYPES = {"limit": int, "min_items": int, "word": str, "phrase": str}


class CheckRuleError(ValueError):
    """A checker rule names an unknown checker or gives it wrong arguments."""


@dataclass(frozen=True)
class CheckRule:
    """A checker and its arguments, e.g. `CheckRule("max_words", (("limit", 60),))`. Call it on a response."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, rule: Any) -> "CheckRule":
        """A rule from a features file: a checker name, or a mapping of `name` and the checker's arguments."""
        if isinstance(rule, str):
            rule = {"name": rule}
        if not isinstance(rule, Mapping) or not isinstance(rule.get("name"), str):
            raise CheckRuleError(
                f"A checker rule must be a checker name or a mapping with `name` (one of {sorted(CHECKERS)}) and its "
                f"arguments, got {rule!r}."
            )
        name, args = rule["name"], {k: v for k, v in rule.items() if k != "name"}
        if name not in CHECKERS:
            raise CheckRuleError(f"Unknown checker {name!r}. Known checkers: {sorted(CHECKERS)}.")
        expected = CHECKERS[name][1]
        if set(args) != set(expected):
            raise CheckRuleError(f"Checker {name!r} takes the arguments {list(expected)}, got {sorted(args)}.")
        for key, value in args.items():
            kind = _ARGUMENT_TYPES[key]
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1) or value == "":
                wanted = "a positive integer" if kind is int else "a non-empty string"
                raise CheckRuleError(f"Argument {key!r} of checker {name!r} must be {wanted}, got {value!r}.")
        return cls(name, tuple(sorted(args.items())))

    def __call__(self, response: str) -> float:
        return CHECKERS[self.name][0](response, **dict(self.args))
