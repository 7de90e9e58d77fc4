"""Entry points: `lifeseq` console script, spark-submit jobs and benchmarks."""
