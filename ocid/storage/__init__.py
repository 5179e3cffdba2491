"""Image storage: content-addressed blobs, layers unpacked once per chain ID, image records, overlay root filesystems."""
