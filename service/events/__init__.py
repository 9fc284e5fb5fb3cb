"""The event types every stage shares: wire schemas, tensors, the per-field error, accepted events, scores."""
