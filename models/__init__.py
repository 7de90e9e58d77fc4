"""Plain `torch.nn` models. No Lightning, Spark or WebDataset imports here."""
