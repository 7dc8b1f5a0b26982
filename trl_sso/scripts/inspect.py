"""`trl-sso inspect`: the signal report of an SSO dataset (anything `load_sso_dataset` reads): accuracy on verifiable
features, on-policyness under a policy, length drift, degeneracy and, with a reward model or a judge (`--judge`,
`trl_sso.signal.judge`), their pairwise verdicts.
Writes `signal.json` and PNG plots, and returns the report."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..data import ORIGINAL, check_columns, load_sso_dataset, required_columns
from ..files import write_json_atomic
from ..names import public_name
from ..options import check_ranges
from ..principles import known_features
from ..signal.onpolicy import load_policy, mean_logps, onpolicy_report
from ..signal.plots import plot_accuracy, plot_onpolicy
from ..signal.report import format_report, signal_report


logger = logging.getLogger(__name__)


@dataclass
class InspectArguments:
    """Options of `trl-sso inspect`."""

    dataset: str = field(
        metadata={"help": "The dataset: a `trl-sso generate` folder, a file, or a Hub dataset id.", "positional": True}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config of a Hub dataset (e.g. iteration_2)."})
    dataset_split: str = field(default="train", metadata={"help": "Split to inspect."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Policy that scores A(x, y) (on-policyness). Default: the generator model recorded in the "
            "dataset, when it loads.",
            "aliases": ["--model"],
        },
    )
    skip_onpolicy: bool = field(default=False, metadata={"help": "Do not load a policy; skip on-policyness."})
    reward_model: str | None = field(
        default=None, metadata={"help": "A sequence-classification reward model that also judges y+ against y-."}
    )
    judge: str | None = field(
        default=None,
        metadata={
            "help": "A pairwise judge of y+ against y- on each record's features (qualitative ones too), asked in "
            "both orders: a causal LM (path or Hub id) or the URL of an OpenAI-compatible endpoint (vllm serve, TGI, "
            "Inference Providers)."
        },
    )
    judge_model: str | None = field(
        default=None, metadata={"help": "The model an endpoint `--judge` serves, when it serves several."}
    )
    judge_timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds an endpoint `--judge` may take to answer one question; a time-out is retried twice, "
            "then the run stops with one line."
        },
    )
    features_file: str | None = field(
        default=None, metadata={"help": "The features file the data were generated with, if any (for its checkers)."}
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where signal.json and the plots go. Default: DATASET/signal for a local folder, else ./signal."
        },
    )
    num_records: int | None = field(default=None, metadata={"help": "Inspect only the first N records."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass when scoring."})

    def __post_init__(self):
        check_ranges(self)
        if self.output_dir is None:
            self.output_dir = str(Path(self.dataset) / "signal") if Path(self.dataset).is_dir() else "signal"


def inspect_dataset(args: InspectArguments) -> dict:
    """Compute, write and return the signal report of `args.dataset` (see the module docstring)."""
    dataset = load_sso_dataset(args.dataset, args.dataset_config, split=args.dataset_split)
    check_columns(dataset.column_names, [*required_columns(steer_coef=0.0), ORIGINAL])
    records = dataset.select(range(min(len(dataset), args.num_records or len(dataset)))).to_list()
    features = known_features(args.features_file)
    for index, record in enumerate(records):
        unknown = [name for name in record.get("features") or [] if name not in features]
        if unknown:
            raise ValueError(
                f"Record {index} of {args.dataset} names the feature(s) {unknown}, which are neither in trl-sso's "
                "library nor in `--features_file`: pass the features file the data were generated with."
            )
    report = signal_report(records, features)
    shown = public_name(args.dataset)  # reports name no local path
    report["dataset"] = shown if args.dataset_config is None else f"{shown} ({args.dataset_config})"

    if args.reward_model:  # first: a model that is no reward model is refused before any policy loads
        from ..signal.rewards import load_reward_model, reward_report

        reward_model, reward_tokenizer = load_reward_model(args.reward_model)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model_name = args.model_name_or_path or records[0].get("generator_model")
    if args.skip_onpolicy or not model_name:
        report["onpolicy"] = {"skipped": "no model: pass `--model`" if not model_name else "`--skip_onpolicy`"}
    else:
        try:
            model, tokenizer = load_policy(model_name)
        except ValueError as error:
            if args.model_name_or_path:  # asked for explicitly: a bad input
                raise
            logger.warning(f"On-policyness skipped: {error}")
            report["onpolicy"] = {"skipped": f"the recorded generator {model_name!r} did not load; pass `--model`"}
        else:
            values, rate = mean_logps(model, tokenizer, records, args.batch_size)
            report["onpolicy"] = {
                "model": public_name(model_name),
                **onpolicy_report(values),
                "records_per_second": rate,
            }
            print(f"Scored A(x, y) of {len(records)} records at {rate:.2f} records/s.")
            plot_onpolicy(values, output / "onpolicy.png")
            del model
    if args.reward_model:
        verdicts = reward_report(reward_model, reward_tokenizer, records)
        report["reward"] = {"model": public_name(args.reward_model), **verdicts}
    if args.judge:
        from ..signal.judge import judge_report, make_judge

        judge = make_judge(args.judge, args.judge_model, batch_size=args.batch_size, timeout=args.judge_timeout)
        report["judge"] = judge_report(judge, records, features)
    plot_accuracy(report, output / "accuracy.png")
    write_json_atomic(output / "signal.json", report, indent=2)
    return report


def main(args) -> int:
    report = inspect_dataset(args)
    print(format_report(report, f"Signal report of {report['dataset']}"))
    print(f"Wrote {args.output_dir}/signal.json and the plots.")
    return 0
