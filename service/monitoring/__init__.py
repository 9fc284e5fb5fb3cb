"""The sidecar's side of monitoring: drift references, the fleet monitor's published figures, projection cuts."""
