"""Images: references, registries.conf, policy, auth, manifests, registry client, transports, pulls."""
