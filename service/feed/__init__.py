"""What the sidecar publishes for the fleet monitor: the monitoring feed, its buffer and records, and delayed labels."""
