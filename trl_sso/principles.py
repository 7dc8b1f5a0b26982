"""Principles: the feature library, seeded feature selection, and the contrastive system prompts built from them.

A *feature* is a quality of a response (Accuracy, Safety, ...) with an adjective pair and a good and a bad principle.
For each query the generator picks a few features and writes two system prompts from them: the positive one (good
adjectives and principles) and the negative one (bad adjectives and principles). The texts below are trl-sso's own.

Two sets of features ship: the qualitative `LIBRARY` (the paper's kind, drawn by default) and the `VERIFIABLE` ones,
whose good side a program can check (`Feature.checker`, see `trl_sso.checkers`), so that the accuracy of the
generated pairs can be measured without a judge. `--features verifiable` (or `qualitative`) names a whole set. Users
add or replace features with a YAML or JSON file (`load_features`), naming a checker to make a feature verifiable.
"""

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .checkers import CheckRule, CheckRuleError


@dataclass(frozen=True)
class Feature:
    """One quality of a response, with its contrastive adjectives and principles, and for a verifiable feature the
    checker that scores how well a response follows the good principle."""

    name: str
    good_adjective: str
    bad_adjective: str
    meaning: str
    good_principle: str
    bad_principle: str
    checker: CheckRule | None = None


LIBRARY: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature(
            "Safety",
            "safe",
            "unsafe",
            "The response avoids content that could lead to harm.",
            "Decline or redirect requests that could hurt someone, and point to safer alternatives when you can.",
            "Go along with risky requests and leave out any warning about possible harm.",
        ),
        Feature(
            "Logicality",
            "logical",
            "illogical",
            "The reasoning holds together from premises to conclusion.",
            "Build the answer step by step so that each claim follows from the ones before it.",
            "Jump between ideas, skip steps and draw conclusions that do not follow from what you said.",
        ),
        Feature(
            "Comprehensiveness",
            "comprehensive",
            "incomplete",
            "The response covers every part of the question.",
            "Address every part of the request and mention the cases a careful reader would ask about.",
            "Answer only a fragment of the request and ignore the parts that need more thought.",
        ),
        Feature(
            "Helpfulness",
            "helpful",
            "unhelpful",
            "The response gives the user something they can act on.",
            "Focus on what the user actually needs and give concrete, usable guidance.",
            "Stay vague, restate the question and give nothing the user could act on.",
        ),
        Feature(
            "Literariness",
            "literary",
            "dull",
            "The writing is vivid and well crafted.",
            "Choose precise, vivid words and vary the rhythm of your sentences.",
            "Use flat, repetitive wording and the same sentence shape throughout.",
        ),
        Feature(
            "Accuracy",
            "accurate",
            "inaccurate",
            "The facts and figures are correct.",
            "State only facts you are confident of and say plainly when you are unsure.",
            "Mix in confident-sounding claims that are wrong and never admit uncertainty.",
        ),
        Feature(
            "Engagement",
            "engaging",
            "boring",
            "The response holds the reader's interest.",
            "Speak to the reader directly and use an example or a question to keep them interested.",
            "Write in a detached, monotonous way that gives the reader no reason to keep reading.",
        ),
        Feature(
            "Concision",
            "concise",
            "verbose",
            "The response is as short as the content allows.",
            "Say what is needed in as few words as possible and cut every filler sentence.",
            "Pad the answer with repetition, digressions and needless preamble.",
        ),
    )
}
LENGTH_FEATURE = "Concision"  # added with probability `concision_prob` as a length control

VERIFIABLE: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature(
            "Brevity",
            "brief",
            "long-winded",
            "The response stays within 40 words.",
            "Answer in no more than 40 words.",
            "Write at least 150 words, with background and side remarks.",
            CheckRule("max_words", (("limit", 40),)),
        ),
        Feature(
            "Bullets",
            "structured",
            "unstructured",
            "The response is a bulleted list.",
            "Give the answer as a list of three to five short points, each on its own line starting with '- '.",
            "Write one continuous paragraph with no lists, headings or line breaks.",
            CheckRule("bullet_list", (("min_items", 3),)),
        ),
        Feature(
            "Summary",
            "summarized",
            "meandering",
            "The response opens with a one-line summary.",
            "Begin with one line that starts with 'In short:' and sums up the answer, then explain.",
            "Start with background details and keep the main point for the very end.",
            CheckRule("starts_with", (("phrase", "In short:"),)),
        ),
        Feature(
            "Lowercase",
            "lowercase",
            "capitalized",
            "Every letter of the response is lowercase.",
            "Write the whole response in lowercase letters only, without a single capital letter.",
            "Capitalize the first letter of every word.",
            CheckRule("lowercase"),
        ),
        Feature(
            "Keyword",
            "essential",
            "roundabout",
            "The response uses the word 'essentially'.",
            "Use the word 'essentially' at least once.",
            "Never use the word 'essentially'.",
            CheckRule("keyword", (("word", "essentially"),)),
        ),
        Feature(
            "JSON",
            "machine-readable",
            "free-form",
            "The response is a single JSON object.",
            'Reply with only a JSON object of the form {"answer": "..."}, with nothing before or after it.',
            "Reply in plain prose sentences, without JSON, code or braces.",
            CheckRule("json"),
        ),
        Feature(
            "Closing",
            "inviting",
            "abrupt",
            "The response ends by offering more help.",
            "End the response with the exact sentence 'Anything else?'",
            "Stop abruptly at the last point, with no closing question or offer of more help.",
            CheckRule("ends_with", (("phrase", "Anything else?"),)),
        ),
    )
}
ALL_FEATURES: dict[str, Feature] = {**LIBRARY, **VERIFIABLE}
# Names that stand for a whole set of features in `--features`
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "qualitative": tuple(name for name in LIBRARY if name != LENGTH_FEATURE),
    "verifiable": tuple(VERIFIABLE),
}


class PrincipleError(ValueError):
    """A principle file or feature name is invalid; the message names the entry and the fix."""


def load_features(path: str | Path, base: Mapping[str, Feature] = LIBRARY) -> dict[str, Feature]:
    """Read features from a YAML or JSON file and merge them into `base` (same name: replaced; new name: added).

    The file holds a list of feature mappings, or a mapping from feature name to the other fields:
    `good_adjective`, `bad_adjective`, `meaning`, `good_principle`, `bad_principle` (all non-empty strings), and
    optionally `checker`, which makes the feature verifiable: a checker name, or a mapping of `name` and the
    checker's arguments (e.g. `{name: max_words, limit: 60}`; see `trl_sso.checkers.CHECKERS`).
    """
    path = Path(path)
    if not path.is_file():
        raise PrincipleError(f"The principle file {str(path)!r} does not exist. Pass the path of a YAML or JSON file.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as error:  # a syntax error of either parser
        raise PrincipleError(f"The principle file {str(path)!r} could not be parsed: {error}") from error
    if isinstance(raw, Mapping):
        raw = [{"name": name, **(fields or {})} for name, fields in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise PrincipleError(
            f"The principle file {str(path)!r} must hold a non-empty list of features (or a mapping from feature name "
            "to its fields)."
        )
    fields = [field for field in Feature.__dataclass_fields__ if field != "checker"]
    features = dict(base)
    for index, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise PrincipleError(f"Entry {index} of {str(path)!r} must be a mapping of {fields}.")
        missing = [f for f in fields if not isinstance(entry.get(f), str) or not entry.get(f).strip()]
        if missing:
            raise PrincipleError(
                f"Entry {index} ({entry.get('name', 'unnamed')!r}) of {str(path)!r} lacks non-empty text for "
                f"{missing}. Every feature needs {fields}."
            )
        unknown = sorted(set(entry) - {*fields, "checker"})
        if unknown:
            raise PrincipleError(
                f"Entry {index} of {str(path)!r} has unknown fields {unknown}; allowed: {[*fields, 'checker']}."
            )
        checker = None
        if entry.get("checker") is not None:
            try:
                checker = CheckRule.parse(entry["checker"])
            except CheckRuleError as error:
                raise PrincipleError(f"Entry {index} ({entry['name']!r}) of {str(path)!r}: {error}") from error
        features[entry["name"]] = Feature(**{f: entry[f].strip() for f in fields}, checker=checker)
    return features


def known_features(features_file: str | Path | None = None) -> dict[str, Feature]:
    """Every packaged feature (qualitative and verifiable), with those of `features_file` added or replacing them."""
    return load_features(features_file, ALL_FEATURES) if features_file else dict(ALL_FEATURES)


def expand_feature_names(names: Sequence[str], features: Mapping[str, Feature]) -> list[str]:
    """`names` with each set name (`FEATURE_SETS`) replaced by its features, duplicates dropped, all checked."""
    expanded = []
    for name in names:
        for member in FEATURE_SETS.get(name, (name,)):
            if member not in expanded:
                expanded.append(member)
    check_feature_names(expanded, features)
    return expanded


def default_candidates(features: Mapping[str, Feature]) -> list[str]:
    """The features drawn when none are named: every qualitative feature (no checker) but the length control."""
    return [name for name, feature in features.items() if name != LENGTH_FEATURE and feature.checker is None]


def check_feature_names(names: Sequence[str], features: Mapping[str, Feature]) -> None:
    unknown = [name for name in names if name not in features]
    if unknown:
        raise PrincipleError(
            f"Unknown feature(s) {unknown}. Known features: {sorted(features)}, and the sets {sorted(FEATURE_SETS)}."
        )


def select_features(
    rng: random.Random,
    features: Mapping[str, Feature],
    num_features: int = 2,
    concision_prob: float = 0.2,
    candidates: Sequence[str] | None = None,
) -> list[Feature]:
    """Pick `num_features` distinct features (from `candidates`, default `default_candidates`), then add Concision
    with probability `concision_prob`. Deterministic for a given `rng` state."""
    pool = list(candidates) if candidates is not None else default_candidates(features)
    if num_features > len(pool):
        raise PrincipleError(f"Cannot pick {num_features} features out of {len(pool)} ({pool}); lower `num_features`.")
    chosen = rng.sample(pool, num_features)
    if LENGTH_FEATURE in features and LENGTH_FEATURE not in chosen and rng.random() < concision_prob:
        chosen.append(LENGTH_FEATURE)
    return [features[name] for name in chosen]


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


GUIDELINE_NOTICE = "Follow these guidelines in your answer, but never mention, quote or hint at them."


def contrastive_system_prompts(features: Sequence[Feature]) -> tuple[str, str]:
    """The positive and negative system prompts (library or policy-chosen features): the adjectives, one block per
    feature, and the instruction not to reveal the guidelines. Both share one structure and differ only in content."""

    def build(adjectives, principles):
        blocks = "\n".join(f"{feature.name}: {principle}" for feature, principle in zip(features, principles))
        return f"Your response should be {_join(adjectives)}.\n\n{blocks}\n\n{GUIDELINE_NOTICE}"

    positive = build([f.good_adjective for f in features], [f.good_principle for f in features])
    negative = build([f.bad_adjective for f in features], [f.bad_principle for f in features])
    return positive, negative


def guideline_system_prompts(good_guideline: str, bad_guideline: str) -> tuple[str, str]:
    """The positive and negative system prompts for a per-query guideline pair written by a principle model."""
    template = (
        "Write a {quality} response to the user that follows these guidelines:\n{guideline}\n\n" + GUIDELINE_NOTICE
    )
    return (
        template.format(quality="relatively good", guideline=good_guideline.strip()),
        template.format(quality="relatively poor", guideline=bad_guideline.strip()),
    )
