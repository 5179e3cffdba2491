"""ocic: a CRI client for ocid (or any CRI v1 runtime)."""
