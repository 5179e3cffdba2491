"""The pod and container lifecycle core: requests, records, managers (no protobuf here)."""
