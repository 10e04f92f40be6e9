"""gradharmony.evaluate."""
