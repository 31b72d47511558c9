"""Services at the edge of the twin: the HTTP API, notifications (signed webhooks from the
store's outbox, the console's event stream, alarm escalation) and ingestion endpoints."""
