"""The book's machinery: chapter configs and profiles, the artifact cache, run records, the runner, the CLI,
the site extension and the plotting helpers. Teaching packages never import it."""
