"""Spark data pipeline: raw events → validated lifelong tables → WebDataset shards.

Nothing in this package imports torch: it runs on Spark executors that may not have it.
"""
