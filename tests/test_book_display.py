"""What a reader sees of a run: numbers formatted one way, captioned tables, one line per progress bar."""

from __future__ import annotations

import io
import sys

import pandas as pd
import pytest

from llmbook.book.tables import number, table
from llmbook.progress import ProgressBar


@pytest.mark.parametrize(
    ("value", "shown"),
    [(12345, "12,345"), (0.87512, "0.875"), (1234.56, "1,234.6"), (9453.562, "9,453.6"), (123456.7, "123,457"),
     (3.1e-7, "3.1e-07"), (0.0, "0"), (float("nan"), "–"), (True, "True"), ("text", "text")],
)
def test_numbers_for_people(value: object, shown: str) -> None:
    assert number(value) == shown


def test_table_has_caption_formats_numbers_and_escapes_html() -> None:
    frame = pd.DataFrame({"tokens": [1234567], "ratio": [0.5], "note": ["<b>x</b>"]}, index=[2048])
    html = table(frame, "Speed at T = 2,048").to_html()
    assert "<caption>Speed at T = 2,048</caption>" in html
    assert "1,234,567" in html and "0.500" in html and "2,048" in html
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert 'class="dataframe"' in html


def test_progress_bar_off_a_terminal_prints_one_final_line(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()  # not a terminal, like a notebook kernel's stderr
    monkeypatch.setattr(sys, "stderr", err)
    bar = ProgressBar(total=500, desc="train", unit="step")
    for i in range(500):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")  # a forced redraw each step, as training loops do
    bar.close()
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in err.getvalue(), err.getvalue()
    assert lines[0].startswith("train: 100%") and "500/500" in lines[0] and "loss=0.002" in lines[0]
    bar.close()  # a second close (tqdm's __del__ does one) adds nothing
    assert err.getvalue().count("\n") == 1


def test_progress_bar_disabled_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    for _ in ProgressBar(range(10), disable=True):
        pass
    assert err.getvalue() == ""


def test_show_source_is_the_running_code_without_a_machine_path() -> None:
    from llmbook.book.notebook import show_source
    from llmbook.tokenization import apply_ranks

    shown = show_source(apply_ranks).data
    assert shown.startswith("`llmbook/tokenization/bpe.py`, lines ")
    assert "def apply_ranks(" in shown and "```python" in shown
    assert "/work/" not in shown and "site-packages" not in shown and "src/lib" not in shown
