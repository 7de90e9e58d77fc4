"""Feature schema, sample decoding and data loading for training (reads what `pipeline` writes)."""
