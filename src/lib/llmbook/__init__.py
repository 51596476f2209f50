"""llmbook: the library behind the executable LLM engineering book."""

__version__ = "0.1.0"
