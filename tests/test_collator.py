"""Exact tensors of the SSO batch layout."""

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from trl_sso.trainer import DataCollatorForSSO


EXAMPLES = [
    {
        "prompt_ids": [1, 2],
        "chosen_ids": [3, 4],
        "rejected_ids": [5],
        "pos_prompt_ids": [9, 1, 2],
        "pos_chosen_ids": [3, 4],
        "pos_rejected_ids": [5],
        "neg_prompt_ids": [8, 1, 2],
        "neg_chosen_ids": [6, 6, 6],
        "neg_rejected_ids": [3, 4],
        "ref_chosen_logps": -1.0,
        "ref_rejected_logps": -2.0,
        "ref_pos_chosen_logps": -3.0,
        "ref_pos_rejected_logps": -4.0,
        "ref_neg_chosen_logps": -5.0,
        "ref_neg_rejected_logps": -6.0,
    },
    {
        "prompt_ids": [7],
        "chosen_ids": [3],
        "rejected_ids": [5, 5],
        "pos_prompt_ids": [9, 7],
        "pos_chosen_ids": [3],
        "pos_rejected_ids": [5, 5],
        "neg_prompt_ids": [8, 7],
        "neg_chosen_ids": [6],
        "neg_rejected_ids": [3],
        "ref_chosen_logps": -1.5,
        "ref_rejected_logps": -2.5,
        "ref_pos_chosen_logps": -3.5,
        "ref_pos_rejected_logps": -4.5,
        "ref_neg_chosen_logps": -5.5,
        "ref_neg_rejected_logps": -6.5,
    },
]


def test_full_layout():
    batch = DataCollatorForSSO(pad_token_id=0)(EXAMPLES)
    expected = {
        # main: [x y+ ; x y-], one row per example, winners first
        "input_ids": [[1, 2, 3, 4], [7, 3, 0, 0], [1, 2, 5, 0], [7, 5, 5, 0]],
        "attention_mask": [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]],
        "completion_mask": [[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0]],
        # positive steer: [x+ y+ ; x+ y-]
        "pos_input_ids": [[9, 1, 2, 3, 4], [9, 7, 3, 0, 0], [9, 1, 2, 5, 0], [9, 7, 5, 5, 0]],
        "pos_attention_mask": [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]],
        "pos_completion_mask": [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 1, 0]],
        # negative steer: [x- y_o ; x- y+]
        "neg_input_ids": [[8, 1, 2, 6, 6, 6], [8, 7, 6, 0, 0, 0], [8, 1, 2, 3, 4, 0], [8, 7, 3, 0, 0, 0]],
        "neg_attention_mask": [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]],
        "neg_completion_mask": [[0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]],
        "ref_chosen_logps": [-1.0, -1.5],
        "ref_rejected_logps": [-2.0, -2.5],
        "ref_pos_chosen_logps": [-3.0, -3.5],
        "ref_pos_rejected_logps": [-4.0, -4.5],
        "ref_neg_chosen_logps": [-5.0, -5.5],
        "ref_neg_rejected_logps": [-6.0, -6.5],
    }
    assert set(batch) == set(expected)
    for key, value in expected.items():
        assert torch.equal(batch[key], torch.tensor(value)), key


def test_truncation_is_per_sequence_before_padding():
    keep_start = DataCollatorForSSO(pad_token_id=0, max_length=4)(EXAMPLES)
    assert keep_start["neg_input_ids"][0].tolist() == [8, 1, 2, 6]
    assert keep_start["neg_completion_mask"][0].tolist() == [0, 0, 0, 1]
    assert keep_start["neg_input_ids"].shape == (4, 4) and keep_start["pos_input_ids"].shape == (4, 4)
    keep_end = DataCollatorForSSO(pad_token_id=0, max_length=3, truncation_mode="keep_end")(EXAMPLES)
    assert keep_end["neg_input_ids"][0].tolist() == [6, 6, 6]
    assert keep_end["completion_mask"][0].tolist() == [0, 1, 1]


@pytest.mark.parametrize("pair", ["", "pos_", "neg_"])
def test_every_pair_block_equals_trl_preference_collator(pair):
    # Each pair, renamed to DPO's columns, collates exactly as DPOTrainer's collator would
    as_dpo = [
        {
            "prompt_ids": e[f"{pair}prompt_ids"],
            "chosen_ids": e[f"{pair}chosen_ids"],
            "rejected_ids": e[f"{pair}rejected_ids"],
        }
        for e in EXAMPLES
    ]
    for kwargs in ({}, {"max_length": 3}, {"max_length": 3, "truncation_mode": "keep_end"}, {"pad_to_multiple_of": 8}):
        ours = DataCollatorForSSO(pad_token_id=0, **kwargs)(EXAMPLES)
        theirs = DataCollatorForPreference(pad_token_id=0, **kwargs)(as_dpo)
        for key in ("input_ids", "attention_mask", "completion_mask"):
            assert torch.equal(ours[pair + key], theirs[key]), (kwargs, key)


def test_only_present_pairs_are_collated():
    main_only = [{k: v for k, v in e.items() if k in ("prompt_ids", "chosen_ids", "rejected_ids")} for e in EXAMPLES]
    assert set(DataCollatorForSSO(pad_token_id=0)(main_only)) == {"input_ids", "attention_mask", "completion_mask"}
    steer_only = [{k: v for k, v in e.items() if k.startswith(("pos_", "neg_"))} for e in EXAMPLES]
    assert set(DataCollatorForSSO(pad_token_id=0)(steer_only)) == {
        f"{pair}_{key}" for pair in ("pos", "neg") for key in ("input_ids", "attention_mask", "completion_mask")
    }
