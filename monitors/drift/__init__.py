"""Drift detection: our detector protocol, adapters for alibi-detect, scipy/numpy tests, and the per-model monitor."""
