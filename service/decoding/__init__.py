"""Ingest bodies decoded into events: the careful path, the simdjson fast path, the tensor lanes, binary bodies."""
