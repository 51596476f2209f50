"""Progress bars for long loops: live in a terminal, one final line anywhere else.

A notebook stores every redraw of a text bar, and a web page turns each carriage return into a new
line, so a training loop would leave hundreds of lines in a rendered chapter. :class:`ProgressBar`
is ``tqdm`` where stderr is a terminal; elsewhere (a papermill kernel, a CI log) it draws into a
buffer nobody reads and, when the loop ends, writes its final state as one line.
"""

from __future__ import annotations

import io
import sys
from typing import Any

from tqdm import tqdm


class ProgressBar(tqdm):
    """``tqdm`` that prints live on a terminal and only its final line elsewhere (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.live = kwargs.get("file") is not None or sys.stderr.isatty()
        if not self.live:
            kwargs["file"] = io.StringIO()  # redraws land here, unseen
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        report = not self.live and not self.disable
        final = str(self) if report else ""
        super().close()
        if report:
            print(final, file=sys.stderr, flush=True)
