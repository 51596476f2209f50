"""Data: bundled corpora and the pretraining-data pipeline (filters, PII, dedup, selection, mixing)."""

from llmbook.data.corpora import (
    Document,
    corpus_info,
    corpus_text,
    data_dir,
    list_corpora,
    load_documents,
    split_text,
)

__all__ = [
    "Document",
    "corpus_info",
    "corpus_text",
    "data_dir",
    "list_corpora",
    "load_documents",
    "split_text",
]
