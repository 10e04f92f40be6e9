"""gradharmony.harmonize."""
