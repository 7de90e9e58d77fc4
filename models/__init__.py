"""Plain `torch.nn` models. No Lightning, Spark or WebDataset imports here.

* `models/blocks/` — reusable parts: embedding tables (TorchRec or torch), jagged attention
  with plain-PyTorch references, GSUs and target attention, windows, input features, losses,
  full-ranking retrieval.
* `models/zoo/` — one file per model, each an `nn.Module` with one config dataclass:
  `sequence/` (sequence encoders), `long_term/` (lifelong CTR long-term units), `ctr/` (whole
  CTR models).
* `models/interfaces.py` — the interfaces the zoo implements; `models/sequential.py` and
  `models/ctr.py` — the composites (tables + dense part) the tasks train and export splits.
"""
