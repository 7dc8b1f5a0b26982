"""Where the principle goes: one rule for the generator and the trainer, carried by the data, checked against the
configuration."""

import pytest
from conftest import Echo, make, sso_args
from datasets import Dataset

from trl_sso import SSOTrainer
from trl_sso.data import PLACEMENTS, SSODataError, build_steered_prompt, load_sso_dataset, pair_texts


CONVERSATION = [
    {"role": "user", "content": "First question?"},
    {"role": "assistant", "content": "An answer."},
    {"role": "user", "content": "Last question?"},
]


def test_each_placement_puts_the_principle_where_it_says(tokenizer):
    system = build_steered_prompt(CONVERSATION, "Be brief.", tokenizer, "system")
    assert system == [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    before = build_steered_prompt(CONVERSATION, "Be brief.", tokenizer, "before_question")
    assert before[0]["content"] == "Be brief.\n\nFirst question?" and before[1:] == CONVERSATION[1:]
    after = build_steered_prompt(CONVERSATION, "Be brief.", tokenizer, "after_question")
    assert after[:2] == CONVERSATION[:2] and after[2]["content"] == "Last question?\n\nBe brief."
    assert CONVERSATION[2]["content"] == "Last question?"  # the query itself is left untouched
    assert build_steered_prompt("Q?", "Be brief.", None, "after_question") == "Q?\n\nBe brief."
    assert build_steered_prompt("Q?", "Be brief.", None, "before_question") == "Be brief.\n\nQ?"
    with pytest.raises(SSODataError, match="Unknown principle placement 'middle'"):
        build_steered_prompt("Q?", "Be brief.", None, "middle")


class Recording(Echo):
    """The scripted policy, keeping every prompt it was asked to answer."""

    def __init__(self):
        super().__init__()
        self.prompts = []

    def sample(self, prompts, *args):
        self.prompts += prompts
        return super().sample(prompts, *args)


def _user_text(messages):
    return [m["content"] for m in messages if m["role"] == "user"]


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_the_trainer_rebuilds_what_the_generator_sampled(tmp_path, tokenizer, tiny_model_dir, placement):
    sampler = Recording()
    dataset, _ = make(tmp_path, tokenizer, sampler=sampler, num_prompts=4, principle_placement=placement).run()
    assert set(dataset["principle_placement"]) == {placement}
    sampled = [[dict(m) for m in prompt] for prompt in sampler.prompts]
    for record in dataset.to_list():
        texts = pair_texts(record, ("pos", "neg"), tokenizer)
        assert texts["pos"][0] in sampled and texts["neg"][0] in sampled  # x+ and x- exactly as sampled
    # and through the trainer's tokenization: the steered prompt's tokens are those of the sampled x+
    trainer = SSOTrainer(
        model=tiny_model_dir,
        args=sso_args(tmp_path / "train", max_length=1024),  # no record dropped: row 0 is record 0
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    record, row = dataset[0], trainer.train_dataset[0]
    x_pos = build_steered_prompt(record["prompt"], record["positive_system"], tokenizer, placement)
    text = tokenizer.decode(row["pos_prompt_ids"])
    assert text == tokenizer.apply_chat_template(x_pos, tokenize=False, add_generation_prompt=True)
    question = _user_text(record["prompt"])[0]
    if placement == "after_question":
        assert text.index(question) < text.index(record["positive_system"])
    else:
        assert text.index(record["positive_system"]) < text.index(question)


def test_the_placement_travels_with_a_saved_dataset(tmp_path, tokenizer):
    make(tmp_path, tokenizer, num_prompts=3, principle_placement="after_question").run()
    loaded = load_sso_dataset(str(tmp_path / "out"))
    assert set(loaded["principle_placement"]) == {"after_question"}
    steered = pair_texts(loaded[0], ("pos",), tokenizer)["pos"][0]
    assert steered[-1]["content"].endswith(loaded[0]["positive_system"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| principle placement | after_question |" in card


def test_a_configured_placement_that_contradicts_the_data_names_both(tmp_path, tokenizer, tiny_model_dir):
    dataset, _ = make(tmp_path, tokenizer, num_prompts=2, principle_placement="after_question").run()
    args = sso_args(tmp_path / "train", sso_principle_placement="system")
    with pytest.raises(SSODataError) as error:
        SSOTrainer(model=tiny_model_dir, args=args, train_dataset=dataset, processing_class=tokenizer)
    message = str(error.value)
    assert "Row 0" in message and "'after_question'" in message and "`sso_principle_placement` is 'system'" in message
    assert "leave `sso_principle_placement` unset" in message
    # agreeing with the data, or unset, trains on the data's placement
    for placement in ("after_question", None):
        args = sso_args(tmp_path / f"train-{placement}", sso_principle_placement=placement)
        SSOTrainer(model=tiny_model_dir, args=args, train_dataset=dataset, processing_class=tokenizer)


def test_data_without_the_column_follow_the_configuration(tokenizer):
    from conftest import sso_rows

    record = sso_rows(n=1)[0]
    assert "principle_placement" not in record
    assert pair_texts(record, ("pos",), tokenizer)["pos"][0][0]["role"] == "system"  # public data: the system slot
    moved = pair_texts(record, ("pos",), tokenizer, "after_question")["pos"][0]
    assert [m["role"] for m in moved] == ["user"] and moved[0]["content"].endswith(record["positive_system"])


def test_bad_placements_are_refused_at_the_boundary(tmp_path, tokenizer, tiny_model_dir):
    from conftest import sso_rows

    rows = sso_rows(n=2)
    for row in rows:
        row["principle_placement"] = "middle"
    with pytest.raises(SSODataError, match="Row 0, column 'principle_placement' holds 'middle'"):
        SSOTrainer(
            model=tiny_model_dir,
            args=sso_args(tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="`sso_principle_placement` must be one of"):
        sso_args(tmp_path, sso_principle_placement="middle")


def test_the_generator_refuses_an_unknown_placement(tmp_path):
    from trl_sso.generation import GenerateArguments

    with pytest.raises(ValueError, match="`principle_placement` must be one of"):
        GenerateArguments(output_dir=str(tmp_path), principle_placement="middle")
