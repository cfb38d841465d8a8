"""Results in an embedded database (DuckDB): measurements, events and verdicts of every run."""
