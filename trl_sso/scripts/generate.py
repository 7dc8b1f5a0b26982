"""`trl-sso generate`: sample an on-policy SSO dataset with `trl_sso.generation.generate`, then publish it when asked.

This module stays light (no torch, no transformers at import) so that `trl-sso generate --help` answers at once.
"""

from dataclasses import dataclass, field

from ..data import RESPONSE_COLUMNS
from ..generation import generate
from ..hub import push_dataset
from ..hub_token import HUB_TOKEN_HELP
from ..runtime import process_state


@dataclass
class PublishArguments:
    """Where `trl-sso generate` publishes the dataset it wrote (as config `iteration_<t>`)."""

    push_to_hub: bool = field(
        default=False, metadata={"help": "Publish the dataset (as config iteration_<iteration>) when done."}
    )
    hub_dataset_id: str | None = field(
        default=None, metadata={"help": "Dataset repo to publish to (namespace/name); needed with --push_to_hub."}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the dataset repo as private."})
    hub_token: str | None = field(default=None, metadata={"help": HUB_TOKEN_HELP})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("`--push_to_hub` needs `--hub_dataset_id` (namespace/name of the dataset repo).")


def generate_dataset(gen_args, publish_args: PublishArguments | None = None):
    """Generate the dataset of `gen_args` (resuming an interrupted run) and, with `publish_args.push_to_hub`, publish
    it from the main process. Returns `(dataset, summary, url)`, `url` being `None` when nothing was published."""
    dataset, summary = generate(gen_args)
    state, url = process_state(), None
    if publish_args is not None and publish_args.push_to_hub and state.is_main_process:
        url = push_dataset(
            gen_args.output_dir,
            publish_args.hub_dataset_id,
            private=publish_args.hub_private_repo,
            config_name=f"iteration_{gen_args.iteration}",
            token=publish_args.hub_token,
        )
    state.wait_for_everyone()
    return dataset, summary, url


def main(gen_args, publish_args) -> int:
    _, summary, url = generate_dataset(gen_args, publish_args)

    if process_state().is_main_process:
        dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v) or "none"
        lengths = "/".join(f"{summary['mean_tokens'][s]:.1f}" for s in RESPONSE_COLUMNS)
        empty = summary.get("empty_prompts_dropped")
        empty = f" ({empty} dropped as empty)" if empty else ""
        print(
            f"Wrote {summary['num_records']} SSO records from {summary['num_prompts']} prompts{empty} to "
            f"{gen_args.output_dir} (dropped: {dropped}; principle fallbacks: "
            f"{summary['principle_fallbacks']}). Mean tokens chosen/rejected/original: {lengths}. Load it with "
            f"`datasets.load_dataset({gen_args.output_dir!r})`; summary: {gen_args.output_dir}/summary.json"
        )
        if summary["signal"].get("judge"):
            from ..signal.judge import format_judge

            print(format_judge(summary["signal"]["judge"]))
        if url:
            print(f"Published the dataset to {url} (config iteration_{gen_args.iteration}).")
    return 0
