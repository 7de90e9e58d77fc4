"""Lightning modules and training utilities."""
