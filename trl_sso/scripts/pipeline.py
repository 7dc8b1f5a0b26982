"""`trl-sso pipeline`: the generator pipeline (paper v2). Sample SSO data from the policy, train a data generator on
it with the `generator` objective, let the generator write pairs for all queries, then train the original policy on
them with plain DPO (SSOTrainer with steering and weight off, which is exactly DPO).

Stages write `generator_data`, `generator_train`, `generator`, `policy_data`, `policy_train` and, last, `report.json`:
a rerun skips what finished, resumes generation at the next batch and training at its last checkpoint.

Publishing: the two datasets as configs `generator_training` and `generator_pairs` of `--hub_dataset_id`; the policy
to `--hub_model_id` and the generator to `<hub_model_id>-generator`. With PEFT both are adapters on the starting
model: its Hub id, or branch `base` of `--hub_model_id` where a local starting model is published.
"""

import dataclasses
import json
import logging
from pathlib import Path

from ..data import MAIN_PAIR_COLUMNS
from ..files import write_json_atomic
from ..hub import point_adapter_at, push_dataset, push_folder
from ..names import hub_id
from ..options import check_ranges
from ..runtime import process_state
from .common import generate_stage, save_next_policy, starting_policy, train_stage, vllm_engine


logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PipelineArguments:
    """Options of `trl-sso pipeline` beyond generation, training and model arguments."""

    policy_num_prompts: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Queries the trained generator writes pairs for (default: as many as it was trained on)."},
    )
    hub_dataset_id: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Publish the generator's training data and the pairs it wrote to this dataset repo."},
    )

    def __post_init__(self):
        check_ranges(self)


def pipeline(pipe_args, gen_options, training_args, model_args, callbacks=None) -> dict:
    """Run the generator pipeline; returns its report."""
    state = process_state()
    root = Path(training_args.output_dir)
    report_path = root / "report.json"
    if report_path.exists():
        logger.info(f"The pipeline finished in an earlier run: its report is {report_path}.")
        return json.loads(report_path.read_text())
    policy, name = starting_policy(model_args)
    engine = vllm_engine(gen_options)  # with `use_vllm`: one engine for both generation stages

    # 1. SSO data sampled from the policy, to train the generator on
    logger.info(f"Stage 1/4: generating SSO data with {name}, to train the generator on.")
    seed_data, seed_summary = generate_stage(
        gen_options,
        model_args,
        training_args,
        model=policy,
        engine=engine,
        model_name=name,
        output_dir=str(root / "generator_data"),
        iteration=1,
        seed=training_args.seed,
    )
    # 2. the generator: the policy trained with the generator objective
    logger.info(f"Stage 2/4: training the generator on {seed_summary['num_records']} records.")
    generator_metrics = train_stage(
        policy,
        seed_data,
        training_args,
        model_args,
        root / "generator_train",
        callbacks,
        generation=seed_summary,
        sso_objective="generator",  # with the generator's default SFT coefficient unless configured for it
    )
    if state.is_main_process and not (root / "generator").exists():
        save_next_policy(policy, root / "generator_train", root / "generator")
    state.wait_for_everyone()
    # 3. pairs written by the generator for all queries
    num_prompts = pipe_args.policy_num_prompts or gen_options.num_prompts
    logger.info(f"Stage 3/4: the generator writes pairs for {num_prompts} queries.")
    pairs, pair_summary = generate_stage(
        dataclasses.replace(gen_options, num_prompts=num_prompts),
        model_args,
        training_args,
        model=str(root / "generator"),
        engine=engine,
        model_name=f"{name} (SSO generator)",
        output_dir=str(root / "policy_data"),
        iteration=2,
        seed=training_args.seed + 1,
    )
    # 4. the original policy trained with plain DPO on (x; y+ > y-)
    logger.info(f"Stage 4/4: training {name} with DPO on {pair_summary['num_records']} generated pairs.")
    policy_metrics = train_stage(
        policy,
        pairs.select_columns(list(MAIN_PAIR_COLUMNS)),
        training_args,
        model_args,
        root / "policy_train",
        callbacks,
        generation=pair_summary,
        sso_objective="policy",
        sso_steer_coef=0.0,
        sso_use_weight=False,
        sso_sft_coef=0.0,
    )
    report = {
        "generator_data": seed_summary["num_records"],
        "policy_data": pair_summary["num_records"],
        "dropped": pair_summary["dropped"],
        "mean_tokens": pair_summary["mean_tokens"],
        "generator_train": generator_metrics,
        "policy_train": policy_metrics,
    }
    if state.is_main_process:
        token = training_args.hub_token
        if pipe_args.hub_dataset_id:
            for folder, config in (("generator_data", "generator_training"), ("policy_data", "generator_pairs")):
                push_dataset(root / folder, pipe_args.hub_dataset_id, config_name=config, token=token)
        if training_args.push_to_hub and training_args.hub_model_id:
            repo, private = training_args.hub_model_id, bool(training_args.hub_private_repo)
            trained = (root / "policy_train", root / "generator_train")
            if hub_id(policy) is None and (root / "policy_train" / "adapter_config.json").is_file():
                # a local starting model: published so that both adapters have a base on the Hub
                push_folder(
                    policy, repo, kind="model", revision="base", private=private, commit_message="Base", token=token
                )
                for folder in trained:
                    point_adapter_at(folder, repo, "base")
            push_folder(trained[0], repo, private=private, token=token)
            push_folder(trained[1], f"{repo}-generator", private=private, token=token)
        write_json_atomic(report_path, report, indent=2)
        logger.info(f"Pipeline done: report in {report_path}.")
    state.wait_for_everyone()
    return report
