"""Reference models built and trained by this package from scikit-learn's bundled data sets (nothing is downloaded).

Each module trains a small deterministic model, saves it as TorchScript and follows the
conventions that :mod:`attribution_workers.loader` understands (``features``/``head`` for
Grad-CAM, ``embed`` for the drift monitors, ``baseline`` for attribution).
"""
