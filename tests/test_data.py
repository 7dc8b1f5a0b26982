"""The canonical record: validation errors that name row, column and fix; the x+/x- rule; the reference converters."""

import copy

import pytest
from conftest import PRINCIPLE_NEG, PRINCIPLE_POS, V1, V2, sso_rows

from trl_sso.data import (
    SSODataError,
    build_steered_prompt,
    check_columns,
    convert_reference_dataset,
    from_reference_record,
    supports_system_role,
    validate_dataset,
    validate_record,
)


@pytest.mark.parametrize("conversational", [True, False])
def test_valid_records_pass(conversational):
    validate_dataset(sso_rows(conversational))


def test_missing_columns_name_them_and_hint_at_the_generator():
    with pytest.raises(SSODataError) as error:
        check_columns(
            ["prompt", "chosen", "rejected"], ("prompt", "chosen", "rejected", "original", "positive_system")
        )
    message = str(error.value)
    assert "'original'" in message and "'positive_system'" in message
    assert "trl-sso generate" in message and "sso_steer_coef=0" in message


def _broken(mutate, conversational=True, index=3):
    rows = sso_rows(conversational)
    mutate(rows[index])
    return rows


@pytest.mark.parametrize(
    "mutate,conversational,fragments",
    [
        (lambda r: r.update(original=""), False, ["Row 3", "'original'", "empty string"]),
        (lambda r: r.update(chosen=[{"role": "assistant", "content": "  "}]), True, ["Row 3", "'chosen'", "empty"]),
        (lambda r: r.update(rejected=[]), True, ["Row 3", "'rejected'", "empty message list"]),
        (lambda r: r.update(positive_system=""), True, ["Row 3", "'positive_system'", "principle"]),
        (lambda r: r.update(negative_system=None), True, ["Row 3", "'negative_system'", "plain string"]),
        (
            lambda r: r["prompt"].insert(0, {"role": "system", "content": "You are nice."}),
            True,
            ["Row 3", "'prompt'", "system message", "principle"],
        ),
        (lambda r: r.update(chosen="Plain text."), True, ["Row 3", "mixes formats", "'chosen' is standard"]),
        (lambda r: r.update(original=42), True, ["Row 3", "'original'", "int"]),
        (lambda r: r.update(prompt=[{"role": "assistant", "content": "Hi"}]), True, ["Row 3", "no user turn"]),
    ],
)
def test_bad_records_name_row_column_and_fix(mutate, conversational, fragments):
    rows = _broken(mutate, conversational)
    with pytest.raises(SSODataError) as error:
        validate_dataset(rows)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_main_pair_only_needs_three_columns():
    row = {k: v for k, v in sso_rows()[0].items() if k in ("prompt", "chosen", "rejected")}
    validate_record(row, 0, ("prompt", "chosen", "rejected"))


def test_steered_prompt_rule(tokenizer):
    prompt = [{"role": "user", "content": "Hi"}]
    assert build_steered_prompt(prompt, PRINCIPLE_POS, tokenizer) == [
        {"role": "system", "content": PRINCIPLE_POS},
        {"role": "user", "content": "Hi"},
    ]
    assert build_steered_prompt("Hi", PRINCIPLE_NEG) == f"{PRINCIPLE_NEG}\n\nHi"
    assert prompt == [{"role": "user", "content": "Hi"}]  # the input is not modified


def test_steered_prompt_without_system_role(tokenizer):
    # A Gemma-style template that refuses the system role: the principle goes into the first user turn
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n{% endfor %}"
    )
    assert not supports_system_role(tokenizer)
    prompt = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    steered = build_steered_prompt(prompt, PRINCIPLE_POS, tokenizer)
    assert steered[0] == {"role": "user", "content": f"{PRINCIPLE_POS}\n\nHi"}
    assert steered[1:] == prompt[1:] and prompt[0]["content"] == "Hi"


def test_template_that_drops_system_messages_counts_as_unsupported(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    assert not supports_system_role(tokenizer)


@pytest.mark.parametrize("record", [V1, V2], ids=["v1", "v2"])
def test_reference_formats_convert_to_conversational(record):
    out = from_reference_record(copy.deepcopy(record))
    assert out["prompt"] == [{"role": "user", "content": "Explain rainbows."}]
    assert out["chosen"] == [{"role": "assistant", "content": "Light refracts in droplets."}]
    assert out["rejected"] == [{"role": "assistant", "content": "Rainbows are painted."}]
    assert out["original"] == [{"role": "assistant", "content": "Sunlight and rain make them."}]
    assert out["positive_system"] == record["p_system"] and out["negative_system"] == record["n_system"]
    assert not {"p_system", "n_system", "raw", "instruction"} & set(out)
    validate_record(out, 0)


def test_v1_keeps_extra_columns_and_its_system_prompt_aside():
    out = from_reference_record(V1, conversational=False)
    assert out["prompt"] == "Explain rainbows." and out["original"] == "Sunlight and rain make them."
    assert out["source"] == "v1" and out["reference_system"] == "You are a helpful assistant."


def test_convert_reference_dataset():
    from datasets import Dataset

    dataset = convert_reference_dataset(Dataset.from_list([V2, V2]), conversational=False)
    assert set(dataset.column_names) == {
        "prompt",
        "chosen",
        "rejected",
        "original",
        "positive_system",
        "negative_system",
    }
    assert dataset[1]["rejected"] == "Rainbows are painted."
    validate_dataset(dataset)


def test_unknown_format_and_missing_turns_are_clear():
    with pytest.raises(SSODataError, match="Row 7 matches neither public SSO format"):
        from_reference_record({"question": "x"}, index=7)
    broken = copy.deepcopy(V2)
    broken["raw"] = [{"from": "human", "value": "Explain rainbows."}]
    with pytest.raises(SSODataError, match="Row 2: no text found for 'original'"):
        from_reference_record(broken, index=2)


def test_pair_table_gives_each_pair_its_prompt_winner_and_loser():
    from trl_sso.data import PAIRS, make_record, pair_texts, pairs_in_use, required_columns

    record = make_record("Q?", " plus", " minus", " own", "Be good.", "Be bad.")
    texts = pair_texts(record)
    assert list(texts) == list(PAIRS) == ["main", "pos", "neg"]
    assert texts["main"] == ("Q?", " plus", " minus")
    assert texts["pos"] == ("Be good.\n\nQ?", " plus", " minus")
    assert texts["neg"] == ("Be bad.\n\nQ?", " own", " plus")
    assert pairs_in_use("policy", 0.0) == ("main",) and pairs_in_use("generator", 0.0) == ("pos", "neg")
    assert required_columns("policy", 0.0) == ("prompt", "chosen", "rejected")
    assert (
        set(required_columns("generator"))
        == set(required_columns("policy", 0.1))
        == {"prompt", "chosen", "rejected", "original", "positive_system", "negative_system"}
    )


def test_make_record_formats():
    from trl_sso.data import SSO_COLUMNS, make_record

    record = make_record([{"role": "user", "content": "Q?"}], "a", "b", "c", "P", "N", seed=3)
    assert list(record) == [*SSO_COLUMNS, "seed"] and record["original"] == [{"role": "assistant", "content": "c"}]
    record = make_record("Q?", "a", "b", "c", "P", "N", conversational=True)
    assert record["prompt"] == [{"role": "user", "content": "Q?"}]
    validate_record(record, 0)
    assert make_record("Q?", " a", " b", " c", "P", "N")["chosen"] == " a"


def test_one_loader_for_folders_files_and_reference_formats(tmp_path):
    import json

    from datasets import Dataset

    from trl_sso.data import load_sso_dataset

    rows = sso_rows()
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "gen" / "dataset"))  # the layout of `trl-sso generate`
    assert load_sso_dataset(str(tmp_path / "gen")).to_list() == rows
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert load_sso_dataset(str(tmp_path / "saved")).to_list() == rows
    reference = tmp_path / "v1.jsonl"
    reference.write_text("\n".join(json.dumps(V1) for _ in range(2)))
    converted = load_sso_dataset(str(reference))
    assert converted[0]["original"] == [{"role": "assistant", "content": V1["raw"]}] and len(converted) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sso_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="\\.json, \\.jsonl, \\.csv or \\.parquet"):
        load_sso_dataset(str(tmp_path / "notes.txt"))
