"""Local storage: content-addressed blobs, the LRU index with pins, and
records of manifests and tags. Knows nothing of HTTP."""
