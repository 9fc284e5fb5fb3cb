"""The demo: ``vai-sidecar demo``, its replayed traffic and the models it (and the tests) train.

Nothing in the product (``common``, ``service``, ``sampler``, ``monitors``, ``attribution_workers``)
imports this package.
"""
