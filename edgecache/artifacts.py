"""Supply-chain artifacts: what signatures, attestations and SBOMs look like in a
registry, and which of them a list entry brings along.

Two ways of attaching them to an image are in use, and both are handled:
- OCI 1.1 referrers: a manifest whose `subject` names the image, found through
  the referrers API or, where a registry lacks it, the `<alg>-<hex>` tag holding
  an index of them (distribution-spec "referrers tag schema");
- cosign's tags: `<alg>-<hex>.sig`, `.att` and `.sbom` beside the image.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from edgecache.jsondoc import document
from edgecache.reference import Digest, parse_digest

# Artifact types (or a referrer's layer media types) by what they are. Prefixes:
# versions and +json / +cbor suffixes vary between tools and releases.
GROUPS: dict[str, tuple[str, ...]] = {
    "signatures": (
        "application/vnd.dev.cosign.artifact.sig",        # cosign, OCI 1.1 mode
        "application/vnd.dev.cosign.simplesigning",       # cosign's payload layer
        "application/vnd.dev.sigstore.bundle",            # cosign --new-bundle-format
        "application/vnd.cncf.notary.signature",          # notation
    ),
    "attestations": (
        "application/vnd.in-toto",
        "application/vnd.dsse.envelope",
        "application/vnd.dev.cosign.artifact.att",
        "application/vnd.dev.cosign.attestation",
    ),
    "sboms": (
        "application/spdx", "text/spdx", "application/vnd.cyclonedx", "application/vnd.syft",
        "application/vnd.dev.cosign.artifact.sbom",
    ),
}
COSIGN_SUFFIX = {"signatures": "sig", "attestations": "att", "sboms": "sbom"}
# Layers of a manifest that is a supply-chain artifact and nothing else (no runtime
# unpacks them): what GROUPS name, and notation's JWS/COSE envelopes.
_ARTIFACT_LAYERS = (*GROUPS["signatures"], *GROUPS["attestations"], *GROUPS["sboms"],
                    "application/jose+json", "application/cose")
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
MAX_ANNOTATIONS_BYTES = 2048     # of one referrer descriptor's annotations (more: dropped)


def _type(value: object) -> str:
    return value.split(";")[0].strip().lower() if isinstance(value, str) else ""


def group_of(artifact_type: str) -> str | None:
    t = _type(artifact_type)
    for name, prefixes in GROUPS.items():
        if any(t.startswith(p) for p in prefixes):
            return name
    return None


@dataclass(frozen=True)
class Selection:
    """Which referrers an entry brings: every one (`all`), or those of some groups
    and exact artifact types."""

    everything: bool = False
    groups: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    def selects(self, artifact_type: str) -> bool:
        if self.everything:
            return True
        return _type(artifact_type) in self.types or group_of(artifact_type) in self.groups

    def cosign_suffixes(self) -> list[str]:
        """cosign tag suffixes to fetch beside the image (`all`: the three)."""
        wanted = GROUPS if self.everything else self.groups
        return [COSIGN_SUFFIX[g] for g in GROUPS if g in wanted]

    @property
    def empty(self) -> bool:
        return not (self.everything or self.groups or self.types)

    def __str__(self) -> str:
        if self.everything:
            return "all"
        if self.empty:
            return "none"
        return ", ".join([*sorted(self.groups), *sorted(self.types)])


NONE = Selection()
ALL = Selection(everything=True)
DEFAULT = Selection(groups=frozenset({"signatures", "attestations"}))


def parse_selection(value: object) -> Selection:
    """`all`, `none`, or a list of group names and artifact types (`type/subtype`)."""
    if value == "all":
        return ALL
    if value == "none" or value == [] or value is False:
        return NONE
    items = value if isinstance(value, list) else [value]
    groups, types = set(), set()
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"referrers: {item!r} is neither a group nor an artifact type")
        item = item.strip()
        if item in GROUPS:
            groups.add(item)
        elif re.fullmatch(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+", item) and len(item) <= 255:
            types.add(item.lower())
        elif item in ("all", "none"):
            raise ValueError(f"referrers: {item!r} stands alone, not in a list")
        else:
            raise ValueError(f"referrers: {item!r} is neither one of {', '.join(GROUPS)} "
                             "nor an artifact type such as application/spdx+json")
    return Selection(groups=frozenset(groups), types=frozenset(types))


def schema_tag(digest: Digest | str, suffix: str | None = None) -> str:
    """The tag for a digest under the referrers tag schema (suffix None) or cosign's."""
    d = parse_digest(str(digest))
    tag = f"{d.algorithm}-{d.hex}"
    return f"{tag}.{suffix}" if suffix else tag


def descriptor(body: bytes, digest: str, media_type: str) -> dict[str, Any] | None:
    """The referrers-API descriptor of a manifest that names a subject, with the
    subject's digest under "subject"; None for any other manifest. Artifact type as
    the spec says: the manifest's own, else its config's media type (an index: none)."""
    if b'"subject"' not in body:
        return None
    doc = document(body)
    if doc is None or not isinstance(doc.get("subject"), dict):
        return None
    try:
        subject = str(parse_digest(str(doc["subject"].get("digest"))))
    except ValueError:
        return None
    desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(body)}
    artifact_type = doc.get("artifactType")
    if not isinstance(artifact_type, str) and "manifests" not in doc:
        artifact_type = (doc.get("config") or {}).get("mediaType") \
            if isinstance(doc.get("config"), dict) else None
    if isinstance(artifact_type, str) and artifact_type:
        desc["artifactType"] = artifact_type
    annotations = _annotations(doc.get("annotations"))
    if annotations:
        desc["annotations"] = annotations
    return {"subject": subject, "descriptor": desc}


def _annotations(value: object) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    out = {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
    return out if out and len(json.dumps(out)) <= MAX_ANNOTATIONS_BYTES else None


def clean_descriptors(items: object, limit: int) -> list[dict[str, Any]]:
    """The descriptors of a referrers answer (an upstream's, or a tag schema index),
    each reduced to the fields the spec names and checked; at most `limit`, duplicates
    dropped. Anything malformed is left out, never passed on."""
    if not isinstance(items, list):
        return []
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for d in items:
        if len(out) >= limit:
            break
        if not isinstance(d, dict) or not isinstance(d.get("mediaType"), str):
            continue
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            continue
        try:
            digest = str(parse_digest(str(d.get("digest"))))
        except ValueError:
            continue
        if digest in seen or len(d["mediaType"]) > 255:
            continue
        seen.add(digest)
        clean: dict[str, Any] = {"mediaType": d["mediaType"], "digest": digest, "size": size}
        if isinstance(d.get("artifactType"), str) and 0 < len(d["artifactType"]) <= 255:
            clean["artifactType"] = d["artifactType"]
        annotations = _annotations(d.get("annotations"))
        if annotations:
            clean["annotations"] = annotations
        out.append(clean)
    return out


def index_of(descriptors: Iterable[dict[str, Any]]) -> bytes:
    """The referrers answer: an OCI image index of the descriptors."""
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": list(descriptors)}, separators=(",", ":")).encode()


def is_artifact_only(body: bytes) -> bool:
    """Whether a manifest is a supply-chain artifact and nothing a runtime can run:
    a manifest whose every layer is a signature, attestation or SBOM; an index (the
    tag schema's) whose every entry has a supply-chain artifact type. A signature
    policy does not ask these for a signature of their own (they are what it reads);
    anything else, `subject` or not, must be signed."""
    doc = document(body)
    if doc is None:
        return False
    if isinstance(doc.get("manifests"), list):
        items = doc["manifests"]
        return bool(items) and all(isinstance(m, dict) and group_of(m.get("artifactType")) is not None
                                   for m in items)
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers or "fsLayers" in doc:
        return False
    return all(isinstance(x, dict) and any(_type(x.get("mediaType")).startswith(p)
                                           for p in _ARTIFACT_LAYERS) for x in layers)
