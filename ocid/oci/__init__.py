"""OCI runtimes: spec generation and the runtime + conmon driver."""
