"""gradharmony.report."""
