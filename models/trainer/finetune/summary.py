"""The summary of a fine-tuning run: held-out figures before and after training, the run's steps
and time, printed as a table and written as ``summary.json`` in the output directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainer.finetune.evaluate import Scores

#: (key of Scores, label) in the order of the table
ROWS = (
    ("valid_rate", "valid rate (parses + PAG)"),
    ("parsable_rate", "parsable rate"),
    ("utility_ratio", "utility / KM"),
    ("mean_reward", "mean reward"),
)
SUMMARY_FILE = "summary.json"


def build(
    command: str,
    model: str,
    out: str,
    before: Scores | None,
    after: Scores | None,
    run: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary document (JSON-ready)."""
    return {
        "command": command,
        "model": model,
        "out": out,
        "before": before.as_dict() if before else None,
        "after": after.as_dict() if after else None,
        **run,
        **(extra or {}),
    }


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}"


def table(summary: dict[str, Any]) -> str:
    """The summary as a text table: one row per figure, columns before / after / change."""
    before, after = summary.get("before") or {}, summary.get("after") or {}
    n = (after or before).get("prompts", 0)
    m = (after or before).get("utility_prompts", 0)
    lines = [
        f"{summary['command']}: {summary['model']} -> {summary['out']}  "
        f"(held-out prompts: {n}; utility / KM over the {m} with a positive optimum)"
    ]
    width = max(len(label) for _, label in ROWS)
    lines.append(f"{'':<{width}}  {'before':>8}  {'after':>8}  {'change':>8}")
    for key, label in ROWS:
        b, a = before.get(key), after.get(key)
        change = a - b if a is not None and b is not None else None
        lines.append(f"{label:<{width}}  {_fmt(b):>8}  {_fmt(a):>8}  {_fmt(change):>8}")
    resumed = f", resumed from step {summary['start_step']}" if summary.get("resumed_from") else ""
    lines.append(
        f"steps: {summary.get('global_step')} ({summary.get('steps_run')} in this run{resumed}), "
        f"training time {summary.get('train_seconds')} s"
    )
    if "reward_mean_first" in summary:
        lines.append(
            f"GRPO reward (logged): first {_fmt(summary['reward_mean_first'])}, last {_fmt(summary['reward_mean_last'])}"
        )
    return "\n".join(lines)


def write(out: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` in ``out``; return its path."""
    path = Path(out) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
