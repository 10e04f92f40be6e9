"""gradharmony.models."""
