"""The streaming server behind Exec, Attach and PortForward URLs (SPDY/3.1 and WebSocket)."""
