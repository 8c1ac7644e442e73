"""Sibling caches on the branch LAN: found over mDNS (or listed), health-checked,
and asked for content by digest before the WAN."""
