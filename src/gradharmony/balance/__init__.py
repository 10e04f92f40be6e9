"""gradharmony.balance."""
