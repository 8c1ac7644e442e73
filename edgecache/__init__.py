"""edgecache: an edge pull-through cache for container images."""

__version__ = "0.1.0"
