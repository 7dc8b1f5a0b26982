"""`trl-sso push`: publish a folder that trl-sso wrote (a dataset, a model or adapter, a reward model) to the Hub,
with its card (`trl_sso.hub.push`, which detects what the folder holds)."""

import dataclasses

from ..hub import push as publish
from ..hub_token import HUB_TOKEN_HELP


@dataclasses.dataclass
class PushArguments:
    """Options of `trl-sso push`."""

    path: str = dataclasses.field(
        metadata={"help": "Folder to publish (what it holds is detected).", "positional": True}
    )
    repo_id: str = dataclasses.field(metadata={"help": "Target repo, namespace/name."})
    config_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Dataset config name (default: iteration_<t> from the dataset's summary)."}
    )
    private: bool = dataclasses.field(default=False, metadata={"help": "Create the repo as private."})
    revision: str | None = dataclasses.field(
        default=None, metadata={"help": "Branch to push to (created when missing), e.g. iteration_2."}
    )
    commit_message: str | None = dataclasses.field(default=None, metadata={"help": "Commit message."})
    hub_token: str | None = dataclasses.field(default=None, metadata={"help": HUB_TOKEN_HELP})


def main(args) -> int:
    url = publish(
        args.path,
        args.repo_id,
        config_name=args.config_name,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        token=args.hub_token,
    )
    print(f"Published {args.path} to {url}")
    return 0
