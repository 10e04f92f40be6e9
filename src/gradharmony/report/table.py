"""The Table 1-style comparison: configurations as rows, task metrics as columns,
mean ± std over the seeds of a configuration, the best value per column in bold."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

LOWER_IS_BETTER = ("MedR", "loss")


def flatten_metrics(tree: Mapping, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as ``{"a/b/c": value}``; ``protocol`` sub-trees,
    booleans and strings are skipped.

    Example:
        >>> flatten_metrics({"retrieval": {"v2t": {"R@1": 10.0, "protocol": {"n": 5}}}, "x": "s"})
        {'retrieval/v2t/R@1': 10.0}
    """
    out: dict[str, float] = {}
    for key, value in tree.items():
        if key == "protocol":
            continue
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def lower_is_better(column: str) -> bool:
    """Whether a smaller value of this metric is better (median rank, losses).

    Example:
        >>> lower_is_better("retrieval/text_to_video/MedR"), lower_is_better("probe/top1")
        (True, False)
    """
    leaf = column.rsplit("/", 1)[-1]
    return any(leaf.startswith(k) or leaf.endswith(k) for k in LOWER_IS_BETTER)


def aggregate(rows: list[tuple[str, Mapping[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """Group ``(configuration label, flat metrics)`` pairs: ``{label: {column: [values]}}``.

    Example:
        >>> aggregate([("gr", {"a": 1.0}), ("gr", {"a": 3.0})])
        {'gr': {'a': [1.0, 3.0]}}
    """
    groups: dict[str, dict[str, list[float]]] = {}
    for label, metrics in rows:
        g = groups.setdefault(label, {})
        for col, v in metrics.items():
            g.setdefault(col, []).append(float(v))
    return groups


def _fmt(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {float(np.std(values, ddof=1)):.2f}"


def comparison_table(
    rows: list[tuple[str, Mapping[str, float]]],
    columns: list[str] | None = None,
    headers: Mapping[str, str] | None = None,
    mark_best: bool = True,
) -> str:
    """Markdown table: one row per configuration label, mean ± sample std over its runs
    (n shown in the first column), the best mean of each column in **bold** (lowest for
    median ranks and losses, highest otherwise; ``mark_best=False`` for descriptive columns).
    A configuration without a column shows "–".

    Example:
        >>> print(comparison_table([("base", {"R@10": 10.0}), ("gr", {"R@10": 20.0}),
        ...                         ("gr", {"R@10": 30.0})]))
        | method | n | R@10 |
        |---|---|---|
        | base | 1 | 10.00 |
        | gr | 2 | **25.00 ± 7.07** |
    """
    if not rows:
        raise ValueError("rows is empty: no run to tabulate")
    groups = aggregate(rows)
    if columns is None:
        columns = sorted({c for g in groups.values() for c in g})
    headers = dict(headers or {})
    best: dict[str, float] = {}
    for col in columns:
        means = [float(np.mean(g[col])) for g in groups.values() if g.get(col)]
        if means:
            best[col] = min(means) if lower_is_better(col) else max(means)
    head = "| method | n | " + " | ".join(headers.get(c, c) for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for label, g in groups.items():
        n = max((len(v) for v in g.values()), default=0)
        cells = []
        for col in columns:
            vals = g.get(col)
            if not vals:
                cells.append("–")
                continue
            text = _fmt(vals)
            is_best = math.isclose(float(np.mean(vals)), best[col], rel_tol=1e-12, abs_tol=1e-12)
            cells.append(f"**{text}**" if mark_best and is_best and len(groups) > 1 else text)
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
