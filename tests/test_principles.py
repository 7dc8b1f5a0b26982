"""Principle library, seeded selection, system prompts, principle files and the lenient parsers."""

import json
import random

import pytest

from trl_sso.generation.sources import (
    PrincipleSource,
    parse_feature_choice,
    parse_principle_json,
    query_rng,
)
from trl_sso.principles import (
    LIBRARY,
    PrincipleError,
    contrastive_system_prompts,
    guideline_system_prompts,
    load_features,
    select_features,
)


def test_library_has_the_eight_features_with_parallel_texts():
    assert list(LIBRARY) == [
        "Safety",
        "Logicality",
        "Comprehensiveness",
        "Helpfulness",
        "Literariness",
        "Accuracy",
        "Engagement",
        "Concision",
    ]
    for feature in LIBRARY.values():
        assert feature.good_adjective != feature.bad_adjective
        assert feature.good_principle.endswith(".") and feature.bad_principle.endswith(".")


def test_selection_is_seeded_and_exact():
    picks = [[f.name for f in select_features(query_rng(42, i, "features"), LIBRARY, 2, 0.2)] for i in range(4)]
    again = [[f.name for f in select_features(query_rng(42, i, "features"), LIBRARY, 2, 0.2)] for i in range(4)]
    assert picks == again
    assert picks == [  # pinned: the same seed must give the same features in every release
        ["Literariness", "Helpfulness"],
        ["Accuracy", "Engagement", "Concision"],
        ["Safety", "Comprehensiveness"],
        ["Engagement", "Safety"],
    ]


def test_concision_probability():
    rng = random.Random(0)
    with_concision = sum("Concision" in [f.name for f in select_features(rng, LIBRARY, 2, 0.2)] for _ in range(2000))
    assert 330 < with_concision < 470  # 0.2 of 2000, give or take
    assert all("Concision" not in [f.name for f in select_features(rng, LIBRARY, 2, 0.0)] for _ in range(200))


def test_contrastive_prompts_exact():
    positive, negative = contrastive_system_prompts([LIBRARY["Accuracy"], LIBRARY["Concision"]])
    assert positive == (
        "Your response should be accurate and concise.\n\n"
        "Accuracy: State only facts you are confident of and say plainly when you are unsure.\n"
        "Concision: Say what is needed in as few words as possible and cut every filler sentence.\n\n"
        "Follow these guidelines in your answer, but never mention, quote or hint at them."
    )
    assert negative.startswith("Your response should be inaccurate and verbose.\n\nAccuracy: Mix in")
    good, bad = guideline_system_prompts("Cite the year.", "Guess the year.")
    assert good.startswith("Write a relatively good response") and "Cite the year." in good
    assert bad.startswith("Write a relatively poor response") and "Guess the year." in bad


def test_features_file_adds_and_replaces(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text(
        "Humor:\n  good_adjective: witty\n  bad_adjective: humorless\n  meaning: The answer is fun.\n"
        "  good_principle: Add a light joke.\n  bad_principle: Stay grim.\n"
        "Accuracy:\n  good_adjective: exact\n  bad_adjective: sloppy\n  meaning: Facts.\n"
        "  good_principle: Check facts.\n  bad_principle: Guess.\n"
    )
    features = load_features(path)
    assert features["Humor"].good_adjective == "witty" and features["Accuracy"].good_adjective == "exact"
    assert len(features) == 9
    json_path = tmp_path / "features.json"
    json_path.write_text(json.dumps([{**vars(features["Humor"]), "name": "Wit"}]))
    assert "Wit" in load_features(json_path)


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("[]", "non-empty list"),
        ('[{"name": "X", "good_adjective": "a"}]', "lacks non-empty text"),
        ("{not json", "could not be parsed"),
        (
            '[{"name": "X", "good_adjective": "a", "bad_adjective": "b", "meaning": "m", "good_principle": "g", '
            '"bad_principle": "b", "colour": "red"}]',
            "unknown fields ['colour']",
        ),
    ],
)
def test_bad_features_file(tmp_path, content, fragment):
    path = tmp_path / "features.json"
    path.write_text(content)
    with pytest.raises(PrincipleError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_features(path)
    with pytest.raises(PrincipleError, match="does not exist"):
        load_features(tmp_path / "missing.json")


def test_parse_feature_choice_is_lenient_and_tops_up():
    known = list(LIBRARY)[:7]
    names, partial = parse_feature_choice("**Safety**, accuracy; and maybe Helpfulness.", known, 2, random.Random(0))
    assert set(names) <= {"Safety", "Accuracy", "Helpfulness"} and len(names) == 2 and not partial
    names, partial = parse_feature_choice("I think the answer should be nice", known, 2, random.Random(0))
    assert len(names) == 2 and partial and set(names) <= set(known)


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"good": "Be precise.", "bad": "Be vague."}', ("Be precise.", "Be vague.")),
        ('Sure!\n```json\n{"Good Principle": "A", "Bad_Principle": "B"}\n```', ("A", "B")),
        ('{"positive": "A", "negative": "B"} and more {"x": 1}', ("A", "B")),
        ('{"good": "A"}', None),
        ("no json here", None),
        ('{"good": "A", "bad": ""}', None),
    ],
)
def test_parse_principle_json(text, expected):
    assert parse_principle_json(text) == expected


class Scripted:
    """A sampler that answers from a list, to drive the policy and model sources."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def sample(self, prompts, temperature, top_p, max_new_tokens, seed):
        from trl_sso.generation.samplers import Completion

        self.calls.append(prompts)
        return [Completion(self.answers.pop(0), 5, True) for _ in prompts]


def test_model_source_falls_back_to_the_library_and_counts_it():
    sampler = Scripted(['{"good": "Explain each step.", "bad": "Skip the steps."}', "sorry, I cannot"])
    source = PrincipleSource("model", LIBRARY, seed=1, principle_sampler=sampler)
    first, second = source.assign([0, 1], ["q0", "q1"], batch_seed=3)
    assert first.source == "model" and not first.fallback and "Explain each step." in first.positive_system
    assert second.source == "library" and second.fallback and second.features


def test_policy_source_picks_and_writes_principles():
    answers = [
        "Accuracy, Logicality",
        "nothing useful",
        '{"good": "G1", "bad": "B1"}',
        "oops",
        '{"good": "G3", "bad": "B3"}',
        '{"good": "G4", "bad": "B4"}',
    ]
    source = PrincipleSource(
        "policy", LIBRARY, seed=7, concision_prob=0.0, policy_sampler=Scripted(answers), policy_writes_principles=True
    )
    first, second = source.assign([0, 1], ["q0", "q1"], batch_seed=0)
    assert sorted(first.features) == ["Accuracy", "Logicality"]
    assert "G1" in first.positive_system and "B1" in first.negative_system
    assert first.fallback  # one of its two principles did not parse ("oops") and kept the library text
    assert second.fallback and len(second.features) == 2  # no feature named: topped up at random
