"""The demo's models (the tests use them too), trained by our code from scikit-learn's bundled data sets.

Nothing is downloaded. Each module trains a small deterministic model, saves it as TorchScript
and follows the conventions that :mod:`attribution_workers.loader` understands (``features``/``head``
for Grad-CAM, ``embed`` for the drift monitors, ``baseline`` for attribution). No product code
imports this package: the product explains whatever model its config file names.
"""
