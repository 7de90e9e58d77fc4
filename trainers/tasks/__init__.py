"""Tasks: labels, loss and evaluation. Each is a `PlatformModule` (sharding, optimizers,
checkpoints) that trains a zoo model chosen by `class_path` in YAML:

* `trainers.tasks.ctr.CtrModule` — CTR (`CtrModel`s; BCE; AUC, GAUC, logloss);
* `trainers.tasks.next_item.NextItemModule` — next-item (causal `SequenceEncoder`s; sampled or
  full softmax; full-ranking HR/NDCG/MRR);
* `trainers.tasks.masked_item.MaskedItemModule` — masked-item (bidirectional encoders; cloze
  training; the same ranking evaluation, with a mask appended after the history).
"""
