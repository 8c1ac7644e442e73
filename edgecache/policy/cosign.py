"""cosign's simple-signing signatures: a JSON payload naming an image by digest
and repository, signed; the signature rides in the payload layer's annotation
(`dev.cosignproject.cosign/signature`), in a `.sig` tag or an OCI 1.1 referrer.

    {"critical": {"identity": {"docker-reference": "registry.corp.example/pos/app"},
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "type": "cosign container image signature"},
     "optional": {...}}
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Callable, Sequence

from edgecache.jsondoc import document
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # keys.py brings in cryptography (7 MiB resident): only when verifying
    from edgecache.policy.keys import PublicKey

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_SIGNATURE_CHARS = 8 * 1024
SIGNATURE_TYPE = "cosign container image signature"


@dataclass(frozen=True)
class Signature:
    payload: bytes
    signature: str          # base64, as in the annotation
    where: str              # for reasons: "tag sha256-….sig" or "referrer sha256:…"


def claims(payload: bytes) -> tuple[str, str]:
    """(docker-manifest-digest, docker-reference) of a payload; ValueError if it is
    not a simple-signing payload."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError("payload too large")
    doc = document(payload)
    if doc is None:
        raise ValueError("payload is not a JSON object")
    critical = doc.get("critical")
    if not isinstance(critical, dict) or critical.get("type") != SIGNATURE_TYPE:
        raise ValueError("not a cosign container image signature")
    digest = _obj(critical.get("image")).get("docker-manifest-digest")
    reference = _obj(critical.get("identity")).get("docker-reference")
    if not isinstance(digest, str) or not isinstance(reference, str):
        raise ValueError("no docker-manifest-digest or docker-reference")
    return digest, reference


def _obj(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def check(sig: Signature, keys: Sequence[PublicKey], digest: str,
          reference_ok: Callable[[str], bool]) -> str | None:
    """None when the signature is good for `digest` (by one of the keys, of a payload
    naming that digest and a reference `reference_ok` accepts); else why not. The
    signature is checked before anything the payload says is believed."""
    if len(sig.signature) > MAX_SIGNATURE_CHARS:
        return f"{sig.where}: signature too long"
    try:
        raw = base64.b64decode(sig.signature, validate=True)
    except (binascii.Error, ValueError):
        return f"{sig.where}: signature is not base64"
    from edgecache.policy.keys import verifies
    if not any(verifies(k, sig.payload, raw) for k in keys):
        return f"{sig.where}: signature does not verify with the rule's keys"
    try:
        signed_digest, reference = claims(sig.payload)
    except ValueError as e:
        return f"{sig.where}: {e}"
    if signed_digest != digest:
        return f"{sig.where}: signs {signed_digest[:80]}, not {digest}"
    if not reference_ok(reference):
        return f"{sig.where}: signed for {reference[:200]}, another repository"
    return None
