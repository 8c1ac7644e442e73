"""Manifest media types and the client's Accept list."""
from __future__ import annotations

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# Most capable first: when several cached answers fit a client, it gets the one
# the upstream would have chosen for a client that accepts them all.
PREFERENCE = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_SCHEMA1)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"   # OCI 1.1-rc, still served by some
# The manifest types a registry chooses among: its answer depends on these alone, so
# the rest of a client's Accept neither reaches the upstream nor keys a record.
KNOWN = frozenset({*PREFERENCE, OCI_ARTIFACT})


class Accept:
    """The media types a client accepts for a manifest (never changed once made: one
    is shared by every request that sent the same Accept headers)."""

    _parsed: dict[tuple[str, ...], "Accept"] = {}    # clients send the same few lists
    PARSED_KEPT = 256
    PARSED_MAX_CHARS = 2048

    def __init__(self, types: list[str], any_type: bool) -> None:
        self.types = types
        self.any_type = any_type
        self._key: str | None = None

    @classmethod
    def parse(cls, headers: "list[str] | tuple[str, ...]") -> "Accept":
        key = tuple(headers)
        got = cls._parsed.get(key)
        if got is None:
            got = cls._parse(key)
            if sum(map(len, key)) <= cls.PARSED_MAX_CHARS:
                if len(cls._parsed) >= cls.PARSED_KEPT:
                    cls._parsed.clear()          # bounded: a client inventing lists gains nothing
                cls._parsed[key] = got
        return got

    @classmethod
    def _parse(cls, headers: tuple[str, ...]) -> "Accept":
        types: list[str] = []
        for h in headers:
            for part in h.split(","):
                t = part.split(";")[0].strip().lower()
                if t and t not in types:
                    types.append(t)
        # No Accept at all means "anything", as registries treat it.
        any_type = not types or "*/*" in types
        return cls([t for t in types if t != "*/*"], any_type)

    def accepts(self, media_type: str) -> bool:
        return self.any_type or media_type.lower() in self.types

    def for_upstream(self) -> list[str]:
        """The list to send upstream: the manifest types the client accepts (in its
        order), or every usual one for "anything"."""
        known = [t for t in self.types if t in KNOWN]
        if self.any_type:
            return list(dict.fromkeys([*known, *PREFERENCE[:4]]))
        return known

    def key(self) -> str:
        """What the upstream's answer depends on: the set of manifest types accepted.
        Whatever else a client sends (order, parameters, other types), one tag has at
        most 2**len(KNOWN) records, and tag_ttl holds for all of them."""
        if self._key is None:
            self._key = "*" if self.any_type else ",".join(sorted(t for t in self.types if t in KNOWN))
        return self._key
