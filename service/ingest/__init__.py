"""The ingest data plane: validate events, count them, sample them for the workers, feed the monitors. No HTTP here."""
