"""Pod networking: CNI configuration and plugins, persistent network namespaces."""
