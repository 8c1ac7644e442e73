"""The HTTP side: the /v2 pull API, OCI errors, blob responses, admin and metrics."""
