"""Reports comparing runs: the Table 1-style comparison and the paper's Figures 3, 4 and 5.

Example:
    >>> from gradharmony.report import comparison_table
    >>> print(comparison_table([("gr", {"R@10": 20.0})]).splitlines()[2])
    | gr | 1 | 20.00 |
"""

from gradharmony.report.figures import (
    cosine_percentiles,
    plot_conflict_distribution,
    plot_contact_sheet,
    plot_cosine_histograms,
    plot_tsne,
    tsne_2d,
)
from gradharmony.report.table import comparison_table, flatten_metrics

__all__ = [
    "build_report",
    "comparison_table",
    "cosine_percentiles",
    "flatten_metrics",
    "plot_conflict_distribution",
    "plot_contact_sheet",
    "plot_cosine_histograms",
    "plot_tsne",
    "tsne_2d",
]


def __getattr__(name):
    if name == "build_report":
        from gradharmony.report.build import build_report

        return build_report
    raise AttributeError(f"module 'gradharmony.report' has no attribute {name!r}")
