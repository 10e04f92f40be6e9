"""gradharmony.data."""
