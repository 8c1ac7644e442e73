"""The credential files clients are checked against: htpasswd (bcrypt) and static
bearer tokens. Read by the config (to refuse a bad file at start) and by access.py
(at start and on reload); blocking: call off the event loop."""
from __future__ import annotations

from pathlib import Path


def read_htpasswd(path: Path) -> dict[str, bytes]:
    """user -> bcrypt hash; lines of other hash kinds are skipped (bcrypt only)."""
    users = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        user, _, hashed = line.partition(":")
        if hashed.startswith(("$2y$", "$2b$", "$2a$")):
            users[user] = hashed.encode()
    return users


def read_tokens(path: Path) -> dict[str, str]:
    """token -> name; lines are NAME:TOKEN or just TOKEN. An empty token raises
    ValueError naming the line: it would let in anyone who sends `Bearer `."""
    tokens = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.rpartition(":")
        if not token.strip():
            raise ValueError(f"line {n} has an empty token")
        tokens[token.strip()] = name if sep else f"token{n}"
    return tokens
