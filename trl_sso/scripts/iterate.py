"""`trl-sso iterate`: online SSO (paper v1). For round t = 1..T, generate SSO data with the round-t policy, train it
with `SSOTrainer` against itself as the frozen reference, and make the result the round-(t+1) policy (with PEFT, the
adapter merged into its base).

Each round writes `round_<t>/data` (the dataset, its summary with the signal report, its card), `round_<t>/train` (the
trained model or adapter with its card), `round_<t>/policy` (the next policy), `round_<t>/signal.json` (with
`--round_signal`: on-policyness of the data under the round's policy and that policy's held-out evaluation) and
`round_<t>/report.json`, written last: a rerun skips the rounds that have a report, and within a round generation
resumes at the next batch and training at its last checkpoint. `rounds.json` and `rounds.png` follow the signal
across rounds (the final policy's evaluation included).

Publishing (`--hub_dataset_id`, `--push_to_hub --hub_model_id`), as each round finishes: its data as config
`iteration_<t>` (the latest is the default); its policy, a full model, on branch `iteration_<t>` and on `main`; with
PEFT its adapter on `iteration_<t>-adapter`, whose base is the previous round's policy (`iteration_<t-1>`, or the
starting model for round 1: its Hub id, or branch `base` where a local starting model is published). Every published
model and adapter thus loads from the Hub alone (see `round_lineage` for the card's branch table).
"""

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

from ..cards import model_license, quantization_summary, round_lineage, sso_model_card, tracker_links
from ..data import RESPONSE_COLUMNS
from ..files import write_json_atomic
from ..hub import point_adapter_at, push_dataset, push_folder
from ..names import hub_id
from ..options import check_ranges
from ..runtime import process_state, wait_for_main
from ..signal.heldout import format_change, held_out_change
from ..signal.intervals import excludes_zero, share_difference, with_interval
from ..signal.plots import plot_rounds
from .common import generate_stage, save_next_policy, signal_stage, starting_policy, train_stage, vllm_engine


logger = logging.getLogger(__name__)


@dataclasses.dataclass
class IterateArguments:
    """Options of `trl-sso iterate` beyond generation, training and model arguments."""

    rounds: int = dataclasses.field(default=3, metadata={"help": "Online rounds (the paper runs 3)."})
    hub_dataset_id: str | None = dataclasses.field(
        default=None, metadata={"help": "Publish each round's dataset to this repo, as config iteration_<t>."}
    )
    round_signal: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "Measure each round's signal under its policy (on-policyness) and evaluate the policy on "
            "held-out prompts, into report.json, rounds.json and rounds.png."
        },
    )
    eval_prompts: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Held-out prompts each round's policy answers with no principle (file, saved dataset or dataset "
            "name; column `prompt`). Default: the 40 packaged held-out prompts, disjoint from the generation prompts."
        },
    )
    eval_num_prompts: int | None = dataclasses.field(
        default=40, metadata={"help": "Use only the first N held-out prompts (all of them: leave it unset)."}
    )
    eval_max_completion_length: int = dataclasses.field(
        default=128, metadata={"help": "Maximum new tokens of the held-out answers."}
    )

    def __post_init__(self):
        check_ranges(self)


def round_row(report: dict) -> dict:
    """One round of `rounds.json`: the signal of its data, its training metrics and its policy's evaluation, each
    share and mean with its 95% interval (`trl_sso.signal.intervals`), and the lengths (the paper's length drift):
    mean tokens of y+, y- and y_o in the round's data and of the policy's held-out answers, with intervals."""
    signal = report.get("signal") or {}
    accuracy = signal.get("accuracy") or {}
    onpolicy = signal.get("onpolicy") or {}
    length = signal.get("length") or {}
    evaluation = report.get("evaluation") or {}
    return {
        "round": report["round"],
        "accuracy": accuracy.get("correct"),
        "accuracy_ci95": accuracy.get("correct_ci95"),
        "accuracy_pairs": accuracy.get("pairs"),
        "accuracy_ties": accuracy.get("tie"),
        "onpolicy_gap": (onpolicy.get("gap_to_original") or {}).get("chosen"),
        "onpolicy_gap_ci95": (onpolicy.get("gap_to_original_ci95") or {}).get("chosen"),
        "mean_tokens": report["mean_tokens"],
        "mean_tokens_ci95": length.get("mean_ci95"),
        "train": report["train"],
        "eval_follows_good": evaluation.get("follows_good_mean"),
        "eval_follows_good_ci95": evaluation.get("follows_good_mean_ci95"),
        "eval_mean_tokens": evaluation.get("mean_tokens"),
        "eval_mean_tokens_ci95": evaluation.get("mean_tokens_ci95"),
        "eval_truncated": evaluation.get("truncated"),
        "eval_truncated_ci95": evaluation.get("truncated_ci95"),
    }


def _held_out_change(after: dict | None, before: dict | None) -> dict | None:
    """The change of the held-out follow rate between two evaluations of the same prompts (`held_out_change`), or
    `None` where either lacks its per-prompt scores."""
    key = "follows_good_per_prompt"
    if not (after and before and key in after and key in before):
        return None
    return held_out_change(after, before)


def rounds_summary(reports: list[dict], final: dict | None) -> dict:
    """`rounds.json`: a row per round (`round_row`) with its changes against the previous round, and the final
    policy's evaluation with its change against the starting policy (`vs_start`). Accuracy: Newcombe's interval for two
    independent sets of pairs, `accuracy_change_significant` when it excludes 0; held-out follow rate
    (`vs_previous`, `vs_start`): Newcombe's paired interval over the same prompts and the exact McNemar test
    (`trl_sso.scripts.evaluate.held_out_change`)."""
    rows = [round_row(report) for report in reports]
    for previous, row, before, after in zip(rows, rows[1:], reports, reports[1:]):
        if row["accuracy_pairs"] and previous["accuracy_pairs"]:
            row["accuracy_change_ci95"] = share_difference(
                round(row["accuracy"] * row["accuracy_pairs"]),
                row["accuracy_pairs"],
                round(previous["accuracy"] * previous["accuracy_pairs"]),
                previous["accuracy_pairs"],
            )
            row["accuracy_change_significant"] = excludes_zero(row["accuracy_change_ci95"])
        change = _held_out_change(after.get("evaluation"), before.get("evaluation"))
        if change is not None:
            row["vs_previous"] = change
    if final:
        final = dict(final)
        change = _held_out_change(final, reports[0].get("evaluation") if reports else None)
        if change is not None:
            final["vs_start"] = change
    return {"rounds": rows, "final_evaluation": final}


def format_rounds(rounds: dict) -> str:
    """`rounds.json` as a table: one line per round, then the final policy. Figures carry their 95% interval; a `*`
    marks a change against the previous round that is larger than its uncertainty."""

    def cell(value, pattern="{:.2f}"):
        return "n/a" if value is None else pattern.format(value)

    lines = [
        f"{'round':>5} {'accuracy [95% interval]':>24} {'ties':>5} {'A gap y+ [95% interval]':>24} "
        f"{'tokens y+/y-/y_o':>17} {'margin':>7} {'W':>5} {'held-out good [95% interval]':>29} "
        f"{'held-out tokens (cut)':>22}"
    ]
    for row in rounds["rounds"]:
        tokens = "/".join(f"{row['mean_tokens'][k]:.0f}" for k in ("chosen", "rejected", "original"))
        accuracy = with_interval(row["accuracy"], row.get("accuracy_ci95"))
        accuracy += "*" if row.get("accuracy_change_significant") else " "
        gap = with_interval(row["onpolicy_gap"], row.get("onpolicy_gap_ci95"))
        held_out = with_interval(row["eval_follows_good"], row.get("eval_follows_good_ci95"))
        held_out += "*" if (row.get("vs_previous") or {}).get("change_significant") else " "
        held_tokens = "n/a"
        if row.get("eval_mean_tokens") is not None:
            held_tokens = f"{row['eval_mean_tokens']:.0f} ({cell(row.get('eval_truncated'))})"
        lines.append(
            f"{row['round']:>5} {accuracy:>24} {cell(row['accuracy_ties']):>5} {gap:>24} {tokens:>17} "
            f"{cell(row['train'].get('rewards/margins')):>7} {cell(row['train'].get('sso/weight')):>5} "
            f"{held_out:>29} {held_tokens:>22}"
        )
    final = rounds.get("final_evaluation")
    if final:
        line = "final policy: held-out answers follow the good side " + with_interval(
            final["follows_good_mean"], final.get("follows_good_mean_ci95")
        )
        if final.get("truncated") is not None:
            line += f" ({final['mean_tokens']:.0f} tokens, {final['truncated']:.0%} cut)"
        if "vs_start" in final:
            line += f"; change against the starting policy {format_change(final['vs_start'])}"
        lines.append(line)
    if len(rounds["rounds"]) > 1:
        lines.append("* the change against the previous round is larger than its 95% interval")
    return "\n".join(lines)


def publish_round(
    t: int, round_dir: Path, start: tuple[str, str], metrics: dict, pipe_args, training_args, model_args
) -> dict:
    """Publish round `t` as the module docstring says; returns where each artifact went (for the report)."""
    from trl import get_quantization_config

    published, token = {}, training_args.hub_token
    if pipe_args.hub_dataset_id:
        push_dataset(round_dir / "data", pipe_args.hub_dataset_id, config_name=f"iteration_{t}", token=token)
        published["dataset"] = {"repo_id": pipe_args.hub_dataset_id, "config_name": f"iteration_{t}"}
    if not (training_args.push_to_hub and training_args.hub_model_id):
        return published
    repo, private = training_args.hub_model_id, bool(training_args.hub_private_repo)
    start_path, start_name = start
    start_id = hub_id(start_path)
    adapter = (round_dir / "train" / "adapter_config.json").is_file()
    base_branch = adapter and start_id is None
    lineage = round_lineage(t, pipe_args.rounds, start_name, adapter, base_branch)

    def card(revision, is_adapter, quantization=None):
        return sso_model_card(
            args=training_args,
            model_name=repo.split("/")[-1],
            base_model=start_id,
            dataset_name=pipe_args.hub_dataset_id,
            hub_model_id=repo,
            tags=["trl", "sso", "online-sso"],
            is_adapter=is_adapter,
            results=metrics,
            quantization=quantization,
            revision=revision,
            lineage=lineage,
            license=model_license(start_path),
            links=tracker_links(),
        )

    if adapter:
        if t > 1:
            point_adapter_at(round_dir / "train", repo, f"iteration_{t - 1}")
        elif base_branch:  # a local starting model: published so that round 1's adapter has a base on the Hub
            push_folder(
                start_path, repo, kind="model", revision="base", private=private, commit_message="Base", token=token
            )
            point_adapter_at(round_dir / "train", repo, "base")
        quantization = quantization_summary(SimpleNamespace(quantization_config=get_quantization_config(model_args)))
        branch = f"iteration_{t}-adapter"
        push_folder(
            round_dir / "train",
            repo,
            revision=branch,
            private=private,
            commit_message=f"SSO round {t}: adapter",
            card=card(branch, True, quantization),
            token=token,
        )
        published["adapter"] = {"repo_id": repo, "revision": branch}
    for branch in (f"iteration_{t}", None):  # the round's branch, and main: the latest policy
        push_folder(
            round_dir / "policy",
            repo,
            kind="model",
            revision=branch,
            private=private,
            commit_message=f"SSO round {t}: policy",
            card=card(branch, False),
            token=token,
        )
    published["model"] = {"repo_id": repo, "revision": f"iteration_{t}"}
    return published


def iterate(pipe_args, gen_options, training_args, model_args, callbacks=None) -> list[dict]:
    """Run the online rounds; returns the per-round reports."""
    state = process_state()
    root = Path(training_args.output_dir)
    start = starting_policy(model_args)
    policy, start_name = start
    reports, engine = [], vllm_engine(gen_options)
    for t in range(1, pipe_args.rounds + 1):
        round_dir = root / f"round_{t}"
        report_path = round_dir / "report.json"
        if report_path.exists():
            logger.info(f"Round {t}/{pipe_args.rounds}: finished in an earlier run ({report_path}), skipped.")
            reports.append(json.loads(report_path.read_text()))
            policy = str(round_dir / "policy")
            continue
        name = start_name + (f" (SSO round {t - 1} policy)" if t > 1 else "")
        logger.info(f"Round {t}/{pipe_args.rounds}: generating with {name}.")
        dataset, summary = generate_stage(
            gen_options,
            model_args,
            training_args,
            model=policy,
            engine=engine,
            model_name=name,
            output_dir=str(round_dir / "data"),
            iteration=t,
            seed=training_args.seed + t - 1,
        )
        logger.info(f"Round {t}/{pipe_args.rounds}: training on {summary['num_records']} records.")
        metrics = train_stage(
            policy, dataset, training_args, model_args, round_dir / "train", callbacks, generation=summary
        )
        if state.is_main_process:
            if not (round_dir / "policy").exists():
                save_next_policy(policy, round_dir / "train", round_dir / "policy")
            report = {
                "round": t,
                "policy": name,
                "num_prompts": summary["num_prompts"],
                "num_records": summary["num_records"],
                "dropped": summary["dropped"],
                "mean_tokens": summary["mean_tokens"],
                "train": metrics,
            }
            if pipe_args.round_signal:
                records = dataset.to_list()
                measured = signal_stage(policy, records, gen_options, pipe_args, round_dir / "signal.json", engine)
                report["signal"] = {
                    "accuracy": summary["signal"]["accuracy"]["overall"],
                    "onpolicy": measured.get("onpolicy"),
                    "length": summary["signal"]["length"],
                }
                report["evaluation"] = measured["evaluation"]
                reports_so_far = [*reports, report]
                final = None
                if t == pipe_args.rounds:
                    final = signal_stage(
                        str(round_dir / "policy"), None, gen_options, pipe_args, root / "final_signal.json"
                    )["evaluation"]
                rounds = rounds_summary(reports_so_far, final)
                write_json_atomic(root / "rounds.json", rounds, indent=2)
                plot_rounds(rounds["rounds"], root / "rounds.png")
                for file in ("rounds.json", "rounds.png"):
                    shutil.copy(root / file, round_dir / "policy" / file)  # published with the round's policy
            report["published"] = publish_round(t, round_dir, start, metrics, pipe_args, training_args, model_args)
            write_json_atomic(report_path, report, indent=2)
            lengths = "/".join(f"{summary['mean_tokens'][k]:.1f}" for k in RESPONSE_COLUMNS)
            logger.info(
                f"Round {t}/{pipe_args.rounds} done: {summary['num_records']} records from {summary['num_prompts']} "
                f"prompts, dropped {sum(summary['dropped'].values())}, mean tokens chosen/rejected/original "
                f"{lengths}, train loss {metrics.get('train_loss', float('nan')):.4f}."
            )
        wait_for_main(state, report_path)  # the evaluation can outlast a barrier's timeout: wait for the report
        reports.append(json.loads(report_path.read_text()))
        policy = str(round_dir / "policy")
    if (root / "rounds.json").exists():
        state.print(format_rounds(json.loads((root / "rounds.json").read_text())))
    return reports
