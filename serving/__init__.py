"""Loading exported artifacts and scoring requests."""
