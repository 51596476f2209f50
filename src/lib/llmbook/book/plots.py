"""The book's plotting helpers (the only library module that draws): labelled axes, units, one style.

Chapters compute data with the library and draw it with these, so every figure of the book has
the same look and carries its units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Sizes for a figure shown at the width of the book's text column: a two-panel figure is about 11 in wide
# and is scaled down to the column, so labels and legends start large enough to stay readable there.
BOOK_STYLE = {
    "figure.figsize": (7.0, 4.2),
    "font.size": 12,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.fonttype": "none",  # text stays text in the SVG: crisp at any zoom, and searchable
}


def use_book_style() -> None:
    """Apply :data:`BOOK_STYLE` and have notebooks embed figures as SVG (sharp at every width)."""
    import matplotlib as mpl
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    mpl.rcParams.update(BOOK_STYLE)
    set_matplotlib_formats("svg")


def lines(
    data: Any,
    *,
    x: str,
    y: str,
    hue: str,
    xlabel: str,
    ylabel: str,
    title: str,
    ax: Any = None,
    logx: bool = False,
    reference_lines: Mapping[str, float] | None = None,
) -> Any:
    """One line per value of `hue` over a long-format DataFrame; optional horizontal reference lines."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]  # lines that coincide stay visible
    for index, (name, group) in enumerate(data.groupby(hue, sort=False)):
        group = group.sort_values(x)
        marker, linestyle = styles[index % len(styles)]
        ax.plot(group[x], group[y], marker=marker, linestyle=linestyle, label=str(name), alpha=0.85)
    for name, value in (reference_lines or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="gray")
        ax.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), ha="right", va="bottom", color="gray")
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    return ax


def bars(data: Mapping[str, float], *, xlabel: str, ylabel: str, title: str, ax: Any = None) -> Any:
    """A labelled bar chart of name -> value, values written on the bars."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    names, values = list(data), list(data.values())
    drawn = ax.bar(names, values, color="tab:blue")
    ax.bar_label(drawn, fmt="%.3g")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return ax
