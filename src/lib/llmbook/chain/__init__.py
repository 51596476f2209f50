"""How the chapters chain: the book tokenizer, the cleaned corpus and the base model, each from the
artifact cache or built by the same library call the chapter that makes it uses.

This package sits above both the teaching packages (which it calls) and the book's machinery (whose
configs and cache it reads): a later chapter asks for ``book_base_model(config)`` and gets the
pretraining chapter's model whether or not that notebook ran.
"""

from llmbook.chain.base_model import book_base_model, corpus_split, train_base_model
from llmbook.chain.corpus import clean_corpus, pretraining_corpus, save_pretraining_corpus, tokenizer_for
from llmbook.chain.tokenizer import SPECIAL_TOKENS, book_tokenizer, save_book_tokenizer, training_text

__all__ = [
    "SPECIAL_TOKENS",
    "book_base_model",
    "book_tokenizer",
    "clean_corpus",
    "corpus_split",
    "pretraining_corpus",
    "save_book_tokenizer",
    "save_pretraining_corpus",
    "tokenizer_for",
    "train_base_model",
    "training_text",
]
