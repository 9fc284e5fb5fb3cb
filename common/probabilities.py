"""The rule a probability vector meets, shared by the events' check and the drift reference's upload."""

from __future__ import annotations

PROBABILITY_TOLERANCE = 1e-2
"""How far from 1 a probability vector may sum. A server that computes its softmax in bfloat16 (common on GPUs)
reports vectors off by up to its unit roundoff, 2**-8 ~ 0.0039 (0.0029 measured on the digits CNN, 44% of its
vectors beyond the former 1e-3, whose events were refused); float16 stays within ~0.0004. What the check is
for, a sigmoid per class or a softmax over another axis, sums far from 1. Events and uploaded drift references
are held to the same rule: a server's own outputs are a valid reference for it."""
