"""Registry clients, one per configured upstream: session lifecycle, auth,
circuit breaker, and the translation of aiohttp's exceptions into ours.
Knows nothing of the store."""
