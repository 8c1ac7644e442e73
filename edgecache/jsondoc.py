"""A JSON object from bytes an upstream, sibling or archive sent, or None: bad
JSON, a document nested too deep to parse (json raises RecursionError), or not an
object. One reading for every manifest-shaped body."""
from __future__ import annotations

import json
from typing import Any


def document(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
