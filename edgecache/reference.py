"""The OCI distribution-spec grammar: repository names, tags, digests.

Everything from a URL is validated here before it can reach the file system.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from edgecache.errors import InvalidDigest, InvalidName

# distribution-spec: <name> components separated by "/", each [a-z0-9]+ joined by separators.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH = 255

# Algorithms we can verify, and the exact length of their hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)


def parse_digest(value: str) -> Digest:
    m = _DIGEST_RE.fullmatch(value)
    if not m:
        raise InvalidDigest(value, "not of the form algorithm:hex")
    algo, enc = m.groups()
    if algo not in ALGORITHMS:
        raise InvalidDigest(value, f"unsupported algorithm {algo}")
    if len(enc) != ALGORITHMS[algo] or not re.fullmatch(r"[a-f0-9]+", enc):
        raise InvalidDigest(value, f"{algo} needs {ALGORITHMS[algo]} lower-case hex characters")
    return Digest(algo, enc)


def is_digest(reference: str) -> bool:
    return ":" in reference


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise InvalidName(name)
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise InvalidName(tag, "invalid tag")
    return tag


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
