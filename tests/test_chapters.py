"""Each chapter executed by papermill with the `smoke` profile; assertions on what it recorded."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from llmbook.book import profiles, report, runner
from llmbook.chain.tokenizer import TOKENIZER_FILE, book_tokenizer
from llmbook.tokenization import ByteBPETokenizer

pytestmark = pytest.mark.xdist_group("book")


def executed(paths: runner.BookPaths, stem: str) -> nbformat.NotebookNode:
    return nbformat.read(paths.executed_dir / f"{stem}.ipynb", as_version=4)


def test_chapters_ran_without_errors_and_drew_figures(smoke_book: runner.BookPaths) -> None:
    for chapter in runner.discover(smoke_book):
        notebook = executed(smoke_book, chapter.stem)
        outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"], chapter.stem
        figures = [o for o in outputs if "image/svg+xml" in o.get("data", {})]  # the book style draws SVG
        assert figures, f"{chapter.stem} drew no figure"
        assert runner.state(chapter, profiles.resolve(chapter.name, "smoke"), smoke_book) == "fresh"


def test_tokenization_chapter_metrics(smoke_book: runner.BookPaths) -> None:
    m = report.load_metrics("tokenization", "smoke", smoke_book.runs_dir)
    # GPT-2's published ranks: every held-out document encodes exactly as tiktoken does.
    assert m["gpt2_mismatched_lines"] == 0 and m["gpt2_tokens_compared"] > 10_000
    # Bytes round-trip; characters seen only in English training do not.
    assert m["byte_bpe_roundtrip"] is True and m["char_bpe_roundtrip"] is False
    assert m["char_bpe_unk_pct_zh"] > 20
    # Same text and vocabulary as HF tokenizers: compression within 3 % on held-out text.
    assert m["bpt_gap_en_pct"] < 3 and m["bpt_gap_zh_pct"] < 3
    assert 2.5 < m["bpt_en_ours"] < 6
    assert m["hf_export_identical"] is True and m["hf_export_lines"] > 100
    assert m["special_token_kept_whole"] is True and m["ordinary_has_no_control_token"] is True
    for algorithm in ("unigram", "bpe"):  # held-out compression relative to sentencepiece
        assert 0.9 < m[f"{algorithm}_vs_reference_en"] < 1.1, (algorithm, m[f"{algorithm}_vs_reference_en"])
    # Likelihood-scored WordPiece merges rare pairs first; HF's trainer merges by frequency.
    assert 0.4 < m["wordpiece_vs_reference_en"] < 0.8


def test_book_tokenizer_is_reused_then_rebuilt_identically(
    smoke_book: runner.BookPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = profiles.resolve("tokenization", "smoke")
    key = report.load_metrics("tokenization", "smoke", smoke_book.runs_dir)["book_tokenizer_key"]
    monkeypatch.setenv("LLMBOOK_CACHE", str(smoke_book.cache_dir))
    cached, artifact = book_tokenizer(config)
    assert artifact.hit and artifact.key == key
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))  # an empty cache: the same call trains it again
    rebuilt, fresh = book_tokenizer(config)
    assert not fresh.hit and fresh.key == key
    assert rebuilt.ranks == cached.ranks and rebuilt.special_tokens == cached.special_tokens
    assert ByteBPETokenizer.load(fresh.path / TOKENIZER_FILE).ranks == cached.ranks
