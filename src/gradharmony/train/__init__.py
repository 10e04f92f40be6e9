"""gradharmony.train."""
