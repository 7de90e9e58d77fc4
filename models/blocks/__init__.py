"""Reusable model parts (no model of their own): embeddings, attention, search, windows,
input features, losses and retrieval. Zoo models compose them."""
