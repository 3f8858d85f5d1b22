"""The bottom layer: pure code every other layer may use, and none of them above it.

Codec (rle), metrics, post-processing, sheet tracking, grading, label parsing, image
checks, settings, process-wide runtime defaults and signal handling. Nothing here
imports Prefect, Dask, MLflow, torch or another steelsight package
(docs/architecture.md; tests/unit/test_layers.py checks it).
"""
