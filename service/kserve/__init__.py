"""KServe's inference logger as a source of events: CloudEvents, their payloads, and the request/response join."""
