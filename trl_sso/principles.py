"""Principles: the feature library, seeded feature selection, and the contrastive system prompts built from them.

A *feature* is a quality of a response (Accuracy, Safety, ...) with an adjective pair and a good and a bad principle.
For each query the generator picks a few features and writes two system prompts from them: the positive one (good
adjectives and principles) and the negative one (bad adjectives and principles). The texts below are trl-sso's own.
Users add or replace features with a YAML or JSON file (`load_features`).
"""

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Feature:
    """One quality of a response, with its contrastive adjectives and principles."""

    name: str
    good_adjective: str
    bad_adjective: str
    meaning: str
    good_principle: str
    bad_principle: str


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


class PrincipleError(ValueError):
    """A principle file or feature name is invalid; the message names the entry and the fix."""


def load_features(path: str | Path, base: Mapping[str, Feature] = LIBRARY) -> dict[str, Feature]:
    """Read features from a YAML or JSON file and merge them into `base` (same name: replaced; new name: added).

    The file holds a list of feature mappings, or a mapping from feature name to the other fields:
    `good_adjective`, `bad_adjective`, `meaning`, `good_principle`, `bad_principle` (all non-empty strings).
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
    fields = [field for field in Feature.__dataclass_fields__]
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
        unknown = sorted(set(entry) - set(fields))
        if unknown:
            raise PrincipleError(f"Entry {index} of {str(path)!r} has unknown fields {unknown}; allowed: {fields}.")
        features[entry["name"]] = Feature(**{f: entry[f].strip() for f in fields})
    return features


def check_feature_names(names: Sequence[str], features: Mapping[str, Feature]) -> None:
    unknown = [name for name in names if name not in features]
    if unknown:
        raise PrincipleError(f"Unknown feature(s) {unknown}. Known features: {sorted(features)}.")


def select_features(
    rng: random.Random,
    features: Mapping[str, Feature],
    num_features: int = 2,
    concision_prob: float = 0.2,
    candidates: Sequence[str] | None = None,
) -> list[Feature]:
    """Pick `num_features` distinct features (from `candidates`, default every feature but Concision), then add
    Concision with probability `concision_prob`. Deterministic for a given `rng` state."""
    pool = list(candidates) if candidates is not None else [name for name in features if name != LENGTH_FEATURE]
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
