"""The coordinator side of fedq: dispatch, aggregation, orchestration and baselines."""
