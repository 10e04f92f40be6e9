"""Figure 4: per method, the distribution of the logged per-triplet cos(g_va, g_vt) in each
training stage (the records' histograms summed over seeds, drawn as densities).

Example:
    >>> import tempfile, os
    >>> from gradharmony.experiment.summary import fake_record
    >>> path = os.path.join(tempfile.mkdtemp(), "f.png")
    >>> figure4([fake_record("gr-s0"), fake_record("gr-s1")], path, ["gr"])
    ['gr']
"""

from __future__ import annotations

import numpy as np


def stage_histograms(records: list[dict], row: str) -> tuple[np.ndarray, list[np.ndarray],
                                                             list[list[int]]]:
    """Bin edges, per stage the histogram counts summed over the row's seeds, and the
    stages' step ranges (of the first seed). Counts outside the edges are left out (the
    density is of all finite cosines, so the curve's area is the share inside).

    Example:
        >>> from gradharmony.experiment.summary import fake_record
        >>> edges, hists, steps = stage_histograms([fake_record("a-s0"), fake_record("a-s1")],
        ...                                        "a")
        >>> len(edges), int(hists[0][-1]), steps
        (81, 10, [[0, 9], [10, 19]])
    """
    recs = [r for r in records if r.get("row") == row and r.get("cosine", {}).get("stages")]
    if not recs:
        return np.zeros(0), [], []
    lo, hi, bins = recs[0]["cosine"]["bins"]
    edges = np.linspace(lo, hi, int(bins) + 1)
    n_stages = min(len(r["cosine"]["stages"]) for r in recs)
    hists = [np.sum([r["cosine"]["stages"][i]["hist"] for r in recs], axis=0)
             for i in range(n_stages)]
    steps = [recs[0]["cosine"]["stages"][i]["steps"] for i in range(n_stages)]
    return edges, hists, steps


def _totals(records: list[dict], row: str) -> list[int]:
    recs = [r for r in records if r.get("row") == row and r.get("cosine", {}).get("stages")]
    n_stages = min(len(r["cosine"]["stages"]) for r in recs)
    return [sum(r["cosine"]["stages"][i]["n"] for r in recs) for i in range(n_stages)]


def figure4(records: list[dict], path, rows: list[str]) -> list[str]:
    """Draw one panel per row that has records; returns the rows drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in rows if stage_histograms(records, r)[1]]
    if not drawn:
        return []
    cols = min(4, len(drawn))
    nrows = (len(drawn) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False,
                             sharex=True)
    for ax in axes.ravel()[len(drawn):]:
        ax.axis("off")
    for ax, row in zip(axes.ravel(), drawn, strict=False):
        edges, hists, steps = stage_histograms(records, row)
        centres = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(hists)))
        totals = _totals(records, row)
        for h, st, c, total in zip(hists, steps, colours, totals, strict=False):
            ax.plot(centres, h / (total * width) if total else h, color=c,
                    label=f"steps {st[0]}–{st[1]}")
        ax.axvline(0.0, color="grey", lw=0.5)
        ax.set_title(row, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel(f"cos(g_va, g_vt) per triplet (within ±{edges[-1]:g})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return drawn
