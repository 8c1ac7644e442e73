"""Real loopback peers for edgecache's tests: registry, containerd, fault-injecting upstream, synthetic images.

Everything here starts real servers/processes on 127.0.0.1; nothing is mocked.
"""
