"""kpod: the daemonless image and pod tool, working directly on ocid's storage."""
