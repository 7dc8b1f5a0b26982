"""PNG plots of signal reports (matplotlib, headless): accuracy per verifiable feature, the distributions of
`A(x, y)`, the rounds of an online run, and the held-out evaluation of policies. Shares are drawn on a fixed 0 to 1
axis, and every figure that has a 95% interval (`trl_sso.signal.intervals`) draws it as an error bar."""

from pathlib import Path

from ..data import RESPONSE_COLUMNS
from .report import SIDE


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error_bars(values: list, intervals: list) -> list[list[float]]:
    """Matplotlib's `yerr` (distances below and above each value) from `[low, high]` intervals; none: zero."""
    below = [max(v - ci[0], 0.0) if v is not None and ci else 0.0 for v, ci in zip(values, intervals)]
    above = [max(ci[1] - v, 0.0) if v is not None and ci else 0.0 for v, ci in zip(values, intervals)]  # rounding
    return [below, above]


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(report: dict, path: Path) -> Path | None:
    """Stacked bars of correct / tie / wrong per verifiable feature (and overall); `None` without verifiable data."""
    accuracy = report["accuracy"]
    if not accuracy["overall"]:
        return None
    plt = _pyplot()
    rows = {**accuracy["per_feature"], "overall": accuracy["overall"]}
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    bottom = [0.0] * len(rows)
    for outcome, color in (("correct", "#2a9d8f"), ("tie", "#c9c9c9"), ("wrong", "#e76f51")):
        heights = [row[outcome] for row in rows.values()]
        ax.bar(list(rows), heights, bottom=bottom, color=color, label=outcome)
        bottom = [b + h for b, h in zip(bottom, heights)]
    correct = [row["correct"] for row in rows.values()]
    intervals = [row.get("correct_ci95") for row in rows.values()]
    ax.errorbar(list(rows), correct, yerr=_error_bars(correct, intervals), fmt="none", ecolor="black", capsize=4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of (record, feature) pairs\n(bar: 95% interval of correct)")
    ax.set_title("Does y+ follow the good principle better than y-?")
    ax.legend(loc="upper right", fontsize=8)
    _save(plt, fig, path)
    return path


def plot_onpolicy(values: dict[str, list[float]], path: Path) -> Path:
    """Histograms of `A(x, y)` for y+, y-, y_o under the plain prompt."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for column in RESPONSE_COLUMNS:
        ax.hist(values[column], bins=20, alpha=0.5, label=SIDE[column])
    ax.set_xlabel("A(x, y): token-mean log-probability under the plain prompt")
    ax.set_ylabel("records")
    ax.set_title("On-policyness (y_o is the policy's own answer)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return path


def plot_rounds(rounds: list[dict], path: Path) -> Path:
    """Accuracy, the on-policyness gap, length drift, the pair margins, W and the held-out follow rate across online
    rounds (one panel each); shares on a 0 to 1 axis, 95% intervals as error bars."""
    plt = _pyplot()
    x = [r["round"] for r in rounds]

    def series(key):
        return {"": ([r.get(key) for r in rounds], [r.get(f"{key}_ci95") for r in rounds])}

    panels = {  # title -> (label -> (values, intervals)), and whether the panel shows shares
        "signal accuracy (correct)": (series("accuracy"), True),
        "A(x, y+) - A(x, y_o)": (series("onpolicy_gap"), False),
        "mean tokens": (
            {
                SIDE[c]: ([(r.get("mean_tokens") or {}).get(c) for r in rounds], [None] * len(rounds))
                for c in RESPONSE_COLUMNS
            },
            False,
        ),
        "training margins": (
            {
                name: ([(r.get("train") or {}).get(key) for r in rounds], [None] * len(rounds))
                for name, key in (
                    ("main", "rewards/margins"),
                    ("steer +", "steer_pos/rewards/margins"),
                    ("steer -", "steer_neg/rewards/margins"),
                )
            },
            False,
        ),
        "mean W": ({"": ([(r.get("train") or {}).get("sso/weight") for r in rounds], [None] * len(rounds))}, False),
        "held-out: good side followed": (series("eval_follows_good"), True),
    }
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (title, (lines, is_share)) in zip(axes.flat, panels.items()):
        for label, (ys, intervals) in lines.items():
            points = [(a, b, ci) for a, b, ci in zip(x, ys, intervals) if b is not None]
            if points:
                xs, values, cis = zip(*points)
                ax.errorbar(xs, values, yerr=_error_bars(values, cis), marker="o", capsize=4, label=label or None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.set_xticks(x)
        if is_share:
            ax.set_ylim(0, 1)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    fig.suptitle("bars: 95% intervals", fontsize=8)
    _save(plt, fig, path)
    return path


def _share_bars(names: list[str], groups: dict[str, tuple[list, list]], path: Path, ylabel: str, title: str) -> Path:
    """Grouped bars of shares on a 0 to 1 axis: per name, one bar per group (`label -> (values, intervals)`), each
    with its 95% interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 3.6))
    width = 0.8 / len(groups)
    for i, (label, (values, intervals)) in enumerate(groups.items()):
        positions = [j + i * width for j in range(len(names))]
        ax.bar(positions, values, width, yerr=_error_bars(values, intervals), capsize=3, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{ylabel}\n(bars: 95% intervals)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(plt, fig, path)
    return path


def plot_evaluation(report: dict, path: Path) -> Path:
    """Grouped bars: per verifiable feature, the share of each model's held-out answers that follow the good side."""
    names = report["features"]
    groups = {
        Path(row["model"]).name or row["model"]: (
            [row["follows_good"][n] for n in names],
            [(row.get("follows_good_ci95") or {}).get(n) for n in names],
        )
        for row in report["models"]
    }
    return _share_bars(names, groups, path, "answers following the good side", "Held-out prompts, no principle")


def plot_calibration(report: dict, path: Path) -> Path:
    """Grouped bars: per feature, the share of prompts where y+ beats y- in each placement of the principle."""
    names = report["features"]
    groups = {}
    for where in report["placements"]:
        cells = [report["cells"][where][name] for name in names]
        groups[where] = ([cell["correct"] for cell in cells], [cell["correct_ci95"] for cell in cells])
    title = f"Which principles does {report['model']} follow, and where?"
    return _share_bars(names, groups, path, "y+ follows the good side better", title)
