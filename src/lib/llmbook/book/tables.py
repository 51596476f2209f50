"""Tables as a reader sees them: a caption, numbers formatted for people, no truncated cells.

Every table a chapter shows goes through :func:`table`, so the whole book formats numbers one way:
integers with thousands separators, floats with a fixed number of decimals, tiny differences (a
``max |difference|`` of 3e-7) in scientific notation because that is what they are about.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def number(value: Any, digits: int = 3) -> str:
    """One number for people: ``12,345``, ``0.875``, ``1,234.5``, ``3.1e-07``; other values as ``str``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    value = float(value)
    if math.isnan(value):
        return "–"
    if value == 0 or math.isinf(value):
        return str(value) if value else "0"
    magnitude = abs(value)
    if magnitude < 10 ** -digits:
        return f"{value:.1e}"  # a small difference: its order of magnitude is the point
    if magnitude >= 1e4:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:,.1f}"
    return f"{value:.{digits}f}"


def table(data: Any, caption: str, *, digits: int = 3) -> Any:
    """A pandas Styler of ``data`` (DataFrame or Series) with ``caption`` and every number through :func:`number`.

    The Styler renders as HTML in the executed notebook and the site, shows every character of every
    cell (pandas' text repr truncates long cells), and escapes HTML in the values.
    """
    import pandas as pd  # lazily: pandas comes with the book extra

    frame = data.to_frame() if isinstance(data, pd.Series) else data
    return (
        frame.style.format(lambda v: number(v, digits), escape="html")
        .format_index(lambda v: number(v, digits), escape="html", axis=0)
        .format_index(lambda v: number(v, digits), escape="html", axis=1)
        .set_caption(caption)
        .set_table_attributes('class="dataframe"')
    )
