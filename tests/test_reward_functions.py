"""The verifiable features as TRL reward functions (`trl_sso.signal.reward_functions`): their scores, the `feature`
column that restricts them, the errors, and a step of TRL's `GRPOTrainer` on a tiny model with them."""

import pytest
from datasets import Dataset

from trl_sso.principles import PrincipleError
from trl_sso.signal.reward_functions import feature_rewards


def test_scores_follow_the_checkers_and_the_feature_column():
    brevity, bullets = feature_rewards(["Brevity", "Bullets"])
    assert (brevity.__name__, bullets.__name__) == ("sso_brevity", "sso_bullets")
    short, long = "A short answer.", " ".join(["word"] * 60)
    listed = "- one\n- two\n- three"
    prompts = [[{"role": "user", "content": "Q"}]] * 3
    as_messages = [[{"role": "assistant", "content": text}] for text in (short, long, listed)]
    assert brevity(prompts, as_messages) == [1.0, 0.0, 1.0]
    assert bullets(prompts, [short, long, listed]) == [0.0, 0.0, 1.0]
    # with a `feature` column, each function scores only its prompts
    column = ["Brevity", "Bullets", "Bullets"]
    assert brevity(prompts, as_messages, feature=column) == [1.0, None, None]
    assert bullets(prompts, as_messages, feature=column) == [None, 0.0, 1.0]


def test_every_verifiable_feature_by_default_and_clear_errors():
    from trl_sso.principles import VERIFIABLE

    assert [f.feature for f in feature_rewards()] == [n for n, f in VERIFIABLE.items() if f.checker is not None]
    with pytest.raises(PrincipleError, match="Unknown feature"):
        feature_rewards(["Brevityy"])
    with pytest.raises(ValueError, match="has no checker, so it cannot be a reward"):
        feature_rewards(["Safety"])


def test_a_grpo_step_with_the_feature_rewards(tiny_model_dir, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Question {i}?"}], "feature": f} for i, f in enumerate("AB" * 2)]
    ).map(lambda row: {"feature": "Brevity" if row["feature"] == "A" else "Bullets"})
    args = GRPOConfig(
        output_dir=str(tmp_path),
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-3,
        report_to="none",
        logging_steps=1,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = GRPOTrainer(
        model=tiny_model_dir, reward_funcs=feature_rewards(["Brevity", "Bullets"]), args=args, train_dataset=dataset
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    assert "rewards/sso_brevity/mean" in logged and "rewards/sso_bullets/mean" in logged
