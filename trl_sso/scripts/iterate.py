"""`trl-sso iterate`: online SSO (paper v1). For round t = 1..T, generate SSO data with the round-t policy, train it
with `SSOTrainer` against itself as the frozen reference, and make the result the round-(t+1) policy (with PEFT, the
adapter merged into its base).

Each round writes `round_<t>/data` (the dataset), `round_<t>/train` (the trained model or adapter with its card),
`round_<t>/policy` (the next policy) and `round_<t>/report.json`, written last: a rerun skips the rounds that have a
report, and within a round generation resumes at the next batch and training at its last checkpoint. With Hub ids, each
round's data is published as config `iteration_<t>` and its model as branch `iteration_<t>`, as the round finishes.
"""

import json
import logging
from pathlib import Path


logger = logging.getLogger(__name__)


def iterate(pipe_args, gen_options, training_args, model_args, callbacks=None) -> list[dict]:
    """Run the online rounds; returns the per-round reports."""
    from ..data import RESPONSE_COLUMNS
    from ..files import write_json_atomic
    from ..hub import push_dataset, push_folder
    from ..runtime import process_state
    from .stages import generate_stage, save_next_policy, starting_policy, train_stage

    state = process_state()
    root = Path(training_args.output_dir)
    policy, start_name = starting_policy(model_args)
    reports = []
    for t in range(1, pipe_args.rounds + 1):
        round_dir = root / f"round_{t}"
        report_path = round_dir / "report.json"
        if report_path.exists():
            reports.append(json.loads(report_path.read_text()))
            policy = str(round_dir / "policy")
            continue
        name = start_name + (f" (SSO round {t - 1} policy)" if t > 1 else "")
        dataset, summary = generate_stage(
            gen_options,
            model_args,
            training_args,
            model=policy,
            model_name=name,
            output_dir=str(round_dir / "data"),
            iteration=t,
            seed=training_args.seed + t - 1,
        )
        metrics = train_stage(policy, dataset, training_args, model_args, round_dir / "train", callbacks)
        if state.is_main_process:
            if not (round_dir / "policy").exists():
                save_next_policy(policy, round_dir / "train", round_dir / "policy")
            if pipe_args.hub_dataset_id:
                push_dataset(round_dir / "data", pipe_args.hub_dataset_id, config_name=f"iteration_{t}")
            if training_args.push_to_hub and training_args.hub_model_id:
                push_folder(
                    round_dir / "train",
                    training_args.hub_model_id,
                    revision=f"iteration_{t}",
                    private=bool(training_args.hub_private_repo),
                    commit_message=f"SSO round {t}",
                )
            report = {
                "round": t,
                "policy": policy,
                "num_prompts": summary["num_prompts"],
                "num_records": summary["num_records"],
                "dropped": summary["dropped"],
                "mean_tokens": summary["mean_tokens"],
                "train": metrics,
            }
            write_json_atomic(report_path, report, indent=2)
            lengths = "/".join(f"{summary['mean_tokens'][k]:.1f}" for k in RESPONSE_COLUMNS)
            logger.warning(
                f"Round {t}/{pipe_args.rounds}: {summary['num_records']} records from {summary['num_prompts']} "
                f"prompts, dropped {sum(summary['dropped'].values())}, mean tokens chosen/rejected/original "
                f"{lengths}, train loss {metrics.get('train_loss', float('nan')):.4f}."
            )
        state.wait_for_everyone()
        reports.append(json.loads(report_path.read_text()))
        policy = str(round_dir / "policy")
    return reports
