"""Verifiable features: every checker on hand-written responses that follow the good side, the bad side, and edge
cases; checker rules and their errors; feature sets; features files that name a checker."""

import json

import pytest

from trl_sso.checkers import CHECKERS, CheckRule, CheckRuleError
from trl_sso.principles import (
    FEATURE_SETS,
    LIBRARY,
    VERIFIABLE,
    PrincipleError,
    default_candidates,
    expand_feature_names,
    load_features,
)


# For each verifiable feature: responses that follow its good side, its bad side, and edge cases (text, score)
CASES = {
    "Brevity": [
        ("Paris is the capital of France.", 1.0),
        (" ".join(["word"] * 160), 0.0),
        (" ".join(["word"] * 40), 1.0),  # exactly the limit
        (" ".join(["word"] * 41), 0.0),
    ],
    "Bullets": [
        ("- Drink water\n- Sleep well\n- Walk daily", 1.0),
        ("Drink water, sleep well and walk daily, all in one paragraph.", 0.0),
        ("Tips:\n* one\n* two\n1. three", 1.0),  # mixed markers count
        ("- only one\n- and two", 0.0),  # fewer than three points
        ("-not a bullet\n-nor this\n-nor that", 0.0),  # a marker needs a space after it
    ],
    "Summary": [
        ("In short: yes.\nThe longer story is this.", 1.0),
        ("Back in 1850, many things happened. So yes.", 0.0),
        ("\n\n**In short:** yes.", 1.0),  # leading blank lines and emphasis
        ("in short: lowercase works too", 1.0),
        ("Well.\nIn short: on the second line only", 0.0),
    ],
    "Lowercase": [
        ("all of this is lowercase, even 42 numbers.", 1.0),
        ("Every Word Is Capitalized Here.", 0.0),
        ("almost all lowercase but One.", 0.0),
        ("123 456", 0.0),  # no letter at all
    ],
    "Keyword": [
        ("It is essentially a matter of time.", 1.0),
        ("It is basically a matter of time.", 0.0),
        ("ESSENTIALLY, yes.", 1.0),
    ],
    "JSON": [
        ('{"answer": "Paris"}', 1.0),
        ("The answer is Paris.", 0.0),
        ('```json\n{"answer": "Paris"}\n```', 1.0),
        ('Here you go: {"answer": "Paris"}', 0.0),
    ],
    "Closing": [
        ("The capital is Paris. Anything else?", 1.0),
        ("The capital is Paris.", 0.0),
        ("The capital is Paris. anything else?  ", 1.0),
        ("Anything else? The capital is Paris.", 0.0),
    ],
}


def test_every_verifiable_feature_is_covered_and_spans_the_required_kinds():
    assert set(CASES) == set(VERIFIABLE) and len(VERIFIABLE) >= 6
    kinds = {feature.checker.name for feature in VERIFIABLE.values()}
    assert {"max_words", "bullet_list", "starts_with", "lowercase", "keyword", "json"} <= kinds
    for feature in VERIFIABLE.values():
        assert feature.good_principle != feature.bad_principle and feature.checker.name in CHECKERS


@pytest.mark.parametrize("name", sorted(CASES))
def test_checkers_on_hand_written_responses(name):
    checker = VERIFIABLE[name].checker
    for text, expected in CASES[name]:
        assert checker(text) == expected, (name, text)


def test_rules_parse_and_bad_rules_are_clear():
    assert CheckRule.parse({"name": "max_words", "limit": 5}) == CheckRule("max_words", (("limit", 5),))
    assert CheckRule.parse("json") == CheckRule("json")
    for rule, fragment in [
        ({"name": "sarcasm"}, "Unknown checker 'sarcasm'"),
        ({"name": "max_words"}, "takes the arguments ['limit']"),
        ({"name": "max_words", "limit": 0}, "must be a positive integer"),
        ({"name": "keyword", "word": ""}, "must be a non-empty string"),
        ({"name": "json", "strict": True}, "takes the arguments []"),
        (42, "a checker name or a mapping"),
    ]:
        with pytest.raises(CheckRuleError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            CheckRule.parse(rule)


def test_feature_sets_and_default_pool():
    from trl_sso.principles import ALL_FEATURES

    assert expand_feature_names(["verifiable"], ALL_FEATURES) == list(VERIFIABLE)
    assert expand_feature_names(["Brevity", "verifiable", "Accuracy"], ALL_FEATURES)[:2] == ["Brevity", "Bullets"]
    assert "Accuracy" in FEATURE_SETS["qualitative"] and "Concision" not in FEATURE_SETS["qualitative"]
    assert default_candidates(ALL_FEATURES) == list(FEATURE_SETS["qualitative"])  # verifiable ones only when named
    with pytest.raises(PrincipleError, match="Unknown feature.*'verifable'.*sets"):
        expand_feature_names(["verifable"], ALL_FEATURES)


def test_features_file_can_name_a_checker(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text(
        "Short:\n  good_adjective: short\n  bad_adjective: long\n  meaning: Few words.\n"
        "  good_principle: Use at most 10 words.\n  bad_principle: Use at least 50 words.\n"
        "  checker: {name: max_words, limit: 10}\n"
    )
    features = load_features(path)
    assert features["Short"].checker("just a few words") == 1.0 and len(features) == len(LIBRARY) + 1
    entry = {
        "name": "X",
        "good_adjective": "a",
        "bad_adjective": "b",
        "meaning": "m",
        "good_principle": "g",
        "bad_principle": "b",
    }
    for checker, fragment in [("tone", "Unknown checker 'tone'"), ({"name": "max_words"}, "takes the arguments")]:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps([{**entry, "checker": checker}]))
        with pytest.raises(PrincipleError, match=f"Entry 0 \\('X'\\) of .*bad.json.*{fragment}"):
            load_features(path)


def test_generator_draws_verifiable_features_when_named(tmp_path, tokenizer):
    from conftest import make

    dataset, summary = make(tmp_path, tokenizer, features=["verifiable"], num_features=1, concision_prob=0.0).run()
    assert {name for row in dataset for name in row["features"]} <= set(VERIFIABLE)
    assert set(summary["feature_counts"]) <= set(VERIFIABLE)
    default, _ = make(tmp_path / "default", tokenizer).run()
    assert not {name for row in default for name in row["features"]} & set(VERIFIABLE)


def _record(features, chosen, rejected, original, **extra):
    from trl_sso.data import make_record

    return make_record("Q?", chosen, rejected, original, "P", "N", conversational=True, features=features, **extra)


def test_signal_report_on_a_dataset_with_known_answers():
    from trl_sso.principles import ALL_FEATURES
    from trl_sso.signal.report import signal_report

    long = " ".join(["word"] * 60)
    records = [
        _record(["Brevity"], "Short answer.", long, long),  # correct
        _record(["Brevity"], long, "Short answer.", "Short answer."),  # wrong
        _record(["Brevity", "JSON"], "Short.", "Short too.", long),  # Brevity tie; JSON tie (neither is JSON)
        _record(["JSON", "Accuracy"], '{"answer": 1}', "one", "one"),  # JSON correct; Accuracy has no checker
    ]
    report = signal_report(records, ALL_FEATURES)
    overall, brevity = report["accuracy"]["overall"], report["accuracy"]["per_feature"]["Brevity"]
    assert overall["pairs"] == 5 and (overall["correct"], overall["tie"], overall["wrong"]) == (0.4, 0.4, 0.2)
    assert (
        brevity["pairs"] == 3
        and brevity["correct"] == pytest.approx(1 / 3)
        and brevity["wrong"] == pytest.approx(1 / 3)
    )
    assert brevity["chosen_follows_good"] == pytest.approx(2 / 3)
    assert brevity["rejected_breaks_good"] == pytest.approx(1 / 3)
    assert brevity["original_follows_good"] == pytest.approx(1 / 3)
    assert set(report["accuracy"]["per_feature"]) == {"Brevity", "JSON"}
    length = report["length"]
    assert length["unit"] == "words" and length["truncated"] is None
    assert length["mean"]["chosen"] == pytest.approx((2 + 60 + 1 + 2) / 4)  # words split on spaces


def test_lengths_truncation_and_degeneracy():
    from trl_sso.signal.report import degeneracy, lengths

    records = [
        _record(
            [],
            "Same answer here.",
            "same answer  here.",
            "Other.",
            chosen_tokens=4,
            rejected_tokens=4,
            original_tokens=2,
            chosen_finished=True,
            rejected_finished=False,
            original_finished=True,
        ),
        _record(
            [],
            "the cat sat on the mat today",
            "the cat sat on the mat yesterday",
            "Mine.",
            chosen_tokens=8,
            rejected_tokens=8,
            original_tokens=2,
            chosen_finished=True,
            rejected_finished=True,
            original_finished=True,
        ),
        _record(
            [],
            "Completely different words",
            "Nothing alike at all here",
            "Mine.",
            chosen_tokens=3,
            rejected_tokens=5,
            original_tokens=2,
            chosen_finished=True,
            rejected_finished=True,
            original_finished=True,
        ),
    ]
    length = lengths(records)
    assert length["unit"] == "tokens" and length["mean"] == {"chosen": 5.0, "rejected": 17 / 3, "original": 2.0}
    assert length["chosen_to_original"] == 2.5 and length["truncated"] == pytest.approx(1 / 9)
    degenerate = degeneracy(records)
    assert degenerate["identical_pairs"] == pytest.approx(1 / 3)  # labels, case and spaces aside
    assert degenerate["near_identical_pairs"] == pytest.approx(1 / 3)  # 4 of 6 trigrams shared: not near-identical
    assert degenerate["distinct_1"]["original"] == pytest.approx(2 / 3)  # "other.", "mine.", "mine."


def test_signal_report_needs_records():
    from trl_sso.signal.report import signal_report

    with pytest.raises(ValueError, match="holds no record"):
        signal_report([], {})


def test_generate_writes_the_signal_into_its_summary(tmp_path, tokenizer):
    from conftest import Echo, make

    def answer(tag, user):  # follows the good side of Brevity and JSON under the positive principle only
        if tag.startswith("Your response should be brief") or tag.startswith("Your response should be machine"):
            return '{"answer": "short"}'
        return "plain answer" if tag == "plain" else " ".join(["long"] * 80)

    dataset, summary = make(
        tmp_path,
        tokenizer,
        sampler=Echo(answer=answer),
        features=["Brevity", "JSON"],
        num_features=1,
        concision_prob=0.0,
        num_prompts=8,
    ).run()
    signal = summary["signal"]
    assert signal["accuracy"]["overall"]["correct"] == 1.0 and signal["accuracy"]["overall"]["pairs"] == 8
    assert signal["length"]["unit"] == "tokens" and signal["length"]["truncated"] == 0.0
    assert {"chosen_finished", "rejected_finished", "original_finished"} <= set(dataset.column_names)


def test_dataset_card_has_a_signal_quality_section(tmp_path, tokenizer):
    from conftest import make
    from huggingface_hub import DatasetCard

    make(tmp_path / "v", tokenizer, features=["verifiable"], num_features=1, concision_prob=0.0).run()
    card = DatasetCard.load(tmp_path / "v" / "out" / "README.md")
    assert "## Signal quality" in card.text and "**Accuracy on verifiable features**" in card.text
    assert "| feature | pairs | correct |" in card.text and "**Length drift**: mean tokens of y+" in card.text
    assert "sso" in card.data.tags
    make(tmp_path / "q", tokenizer).run()
    text = (tmp_path / "q" / "out" / "README.md").read_text()
    assert "No record carries a verifiable feature" in text and "**Degeneracy**" in text


@pytest.mark.parametrize("conversational", [True, False], ids=["messages", "text"])
def test_onpolicy_logps_equal_the_trainers_a(tiny_model_dir, tokenizer, tmp_path, conversational):
    """`A(x, y+)` and `A(x, y-)` of the inspection equal the trainer's own `A` (completion log-probs of the main
    pair over its completion tokens), record by record; `A(x, y_o)` is scored the same way."""
    import torch
    from conftest import sso_args, sso_rows
    from numerics import assert_close_to_scale

    from trl_sso import SSOTrainer
    from trl_sso.signal.onpolicy import mean_logps, onpolicy_report

    rows = sso_rows(conversational, n=4)
    from datasets import Dataset

    trainer = SSOTrainer(
        model=tiny_model_dir,
        args=sso_args(tmp_path),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    model = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        (chosen, rejected), _ = trainer._forward_pair(model, batch, "main")
    tokens = trainer._completion_tokens(batch, "main")
    values, rate = mean_logps(model, tokenizer, rows, batch_size=3)
    # token means of about -12 nats, batched in other rows: 1e-6 of the largest (tests/numerics.py)
    assert_close_to_scale(torch.tensor(values["chosen"]), chosen / tokens[0], 1e-6, name="chosen")
    assert_close_to_scale(torch.tensor(values["rejected"]), rejected / tokens[1], 1e-6, name="rejected")
    assert rate > 0 and all(v < 0 for v in values["original"])
    report = onpolicy_report(values)
    assert report["gap_to_original"]["chosen"] == pytest.approx(
        sum(a - o for a, o in zip(values["chosen"], values["original"])) / 4
    )
    assert 0 < report["mean_prob"]["original"] < 1
