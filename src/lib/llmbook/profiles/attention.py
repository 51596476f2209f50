"""Profile of the attention chapter (filled in with the chapter)."""
