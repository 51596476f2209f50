"""What every benchmark does last: stamp the run, write its JSON and print a summary (not a benchmark itself)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path


def write_results(results: dict, out: str | Path, summary: Callable[[dict], str], t_start: float) -> dict:
    """Record the load average at the end and the runtime, write ``results`` to ``out`` and print
    ``summary(results)`` (called last, so it can quote the runtime)."""
    results["load_average_1_5_15_at_end"] = list(os.getloadavg())
    results["runtime_s"] = time.perf_counter() - t_start
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(summary(results))
    print(f"wrote {out}")
    return results
