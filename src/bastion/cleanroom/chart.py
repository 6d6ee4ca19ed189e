"""A PNG bar chart of a released result, with its confidence intervals as error bars."""

from __future__ import annotations

from pathlib import Path

from bastion.cleanroom.release import ResultRow

MAX_BARS = 60


def write_chart(rows: list[ResultRow], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.value is not None][:MAX_BARS]
    labels = [" / ".join(r.group.values()) or r.statistic for r in shown]
    if len({r.statistic for r in shown}) > 1:
        labels = [f"{lab} {r.statistic}" for lab, r in zip(labels, shown, strict=True)]
    values = [float(r.value or 0.0) for r in shown]
    low = [
        max(v - (r.ci_low if r.ci_low is not None else v), 0.0)
        for v, r in zip(values, shown, strict=True)
    ]
    high = [
        max((r.ci_high if r.ci_high is not None else v) - v, 0.0)
        for v, r in zip(values, shown, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(shown) + 2), 4.5))
    ax.bar(range(len(shown)), values, yerr=[low, high], capsize=3, color="#3b6ea8")
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("released value (error bars: confidence interval)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
