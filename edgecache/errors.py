"""Domain errors. They say what went wrong in our terms; server/oci_errors.py maps
them to OCI error codes and HTTP statuses in one table."""
from __future__ import annotations

import errno

class EdgecacheError(Exception):
    """Base of every error we raise on purpose."""


class ConfigError(EdgecacheError, ValueError):
    """A configuration problem, phrased as `key: reason (value)`."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"config error: {key}: {reason} (got {value!r})")


class ListError(EdgecacheError, ValueError):
    """An image list that cannot be used; `problem` (sync/lists.py's ListProblem)
    names the file, the line and why."""

    def __init__(self, problem: object) -> None:
        self.problem = problem
        super().__init__(str(problem))


class InvalidName(EdgecacheError, ValueError):
    def __init__(self, name: str, reason: str = "invalid repository name") -> None:
        self.name = name
        super().__init__(f"{reason}: {name[:300]!r}")


class InvalidDigest(EdgecacheError, ValueError):
    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        super().__init__(f"invalid digest {value[:300]!r}: {reason}")


class UnknownRegistry(EdgecacheError, LookupError):
    """A registry that is not configured: never dialled."""

    def __init__(self, registry: str) -> None:
        self.registry = registry
        super().__init__(f"registry {registry[:300]!r} is not configured on this mirror")


class ManifestUnknown(EdgecacheError, LookupError):
    pass


class BlobUnknown(EdgecacheError, LookupError):
    pass


class ManifestTooLarge(EdgecacheError):
    pass


class NoSuchEndpoint(EdgecacheError, LookupError):
    """A path this mirror does not serve."""


class Unsupported(EdgecacheError):
    """A method this pull-only mirror does not serve; `allow` lists those it does."""

    def __init__(self, detail: str, allow: str | None = None) -> None:
        self.allow = allow
        super().__init__(detail)


class RequestTooLarge(EdgecacheError):
    """A request body over what the server reads."""


class StoreUnhealthy(EdgecacheError):
    """The store is not open, or its directory is gone (the node cannot serve)."""


class RangeNotSatisfiable(EdgecacheError):
    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(f"range not satisfiable for size {size}")


class DigestMismatch(EdgecacheError):
    def __init__(self, expected: str, got: str, source: str = "upstream") -> None:
        self.expected, self.got, self.source = expected, got, source
        super().__init__(f"{source} sent bytes for {got}, expected {expected}")


class SizeMismatch(EdgecacheError):
    def __init__(self, expected: int, got: int, source: str = "upstream") -> None:
        self.expected, self.got, self.source = expected, got, source
        super().__init__(f"{source} sent {got} bytes, expected {expected}")


class BlobTooLarge(EdgecacheError):
    """A blob larger than the whole cache budget: it could never be kept."""

    def __init__(self, size: int, budget: int, source: str = "upstream") -> None:
        self.size, self.budget, self.source = size, budget, source
        super().__init__(f"{source} sent a blob of {size}+ bytes, over the cache's {budget}")


class FillAbandoned(EdgecacheError):
    """A fill nobody waited for any more was cancelled (cache.abandon_after)."""


class StoreFull(EdgecacheError, OSError):
    """The disk under data_dir is full (or its quota used up)."""

    def __init__(self, detail: str = "disk full under data_dir", *,
                 code: int | None = errno.ENOSPC) -> None:
        super().__init__(code, detail)

    @staticmethod
    def means_full(e: OSError) -> bool:
        return e.errno in (errno.ENOSPC, errno.EDQUOT)


class StoreLocked(EdgecacheError):
    """Another edgecache process owns this data_dir."""


class NoMatchingPlatform(EdgecacheError):
    """An image index with no manifest for any platform asked for."""


class UpstreamError(EdgecacheError):
    """Any failure talking to an upstream; `kind` labels metrics."""

    kind = "error"

    def __init__(self, upstream: str, detail: str) -> None:
        self.upstream = upstream
        super().__init__(f"upstream {upstream}: {detail}")


class UpstreamUnreachable(UpstreamError, ConnectionError):
    kind = "unreachable"


class UpstreamTimeout(UpstreamError, TimeoutError):
    kind = "timeout"


class UpstreamIncomplete(UpstreamError):
    """The body broke off (truncated, reset, or stalled past the read timeout)."""

    kind = "incomplete"


class UpstreamDown(UpstreamError):
    """The circuit breaker is open: we did not even try."""

    kind = "breaker_open"

    def __init__(self, upstream: str, retry_in: float) -> None:
        self.retry_in = retry_in
        super().__init__(upstream, f"marked down, retry in {retry_in:.1f}s")


class UpstreamRateLimited(UpstreamError):
    kind = "rate_limited"

    def __init__(self, upstream: str, retry_after: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(upstream, "rate limited (429)")


class UpstreamDenied(UpstreamError):
    kind = "denied"

    def __init__(self, upstream: str, status: int) -> None:
        self.status = status
        super().__init__(upstream, f"denied ({status})")


class UpstreamNotFound(UpstreamError, LookupError):
    kind = "not_found"


class UpstreamBadResponse(UpstreamError):
    kind = "bad_response"

    def __init__(self, upstream: str, status: int, detail: str = "") -> None:
        self.status = status
        super().__init__(upstream, f"unexpected status {status} {detail}".strip())


# Kinds that say the upstream could not be talked to at all (offline fallbacks apply).
def is_unavailable(err: BaseException) -> bool:
    return isinstance(err, (UpstreamUnreachable, UpstreamTimeout, UpstreamDown,
                            UpstreamRateLimited)) or (
        isinstance(err, UpstreamBadResponse) and err.status >= 500)


class NameUnknown(EdgecacheError, LookupError):
    """The repository is not known upstream."""


class Unauthorized(EdgecacheError):
    """No credentials, or wrong ones, for something that needs them (401)."""


class TooManyRequests(EdgecacheError):
    """This client asks for more than its share (credential checks): 429."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        self.retry_after = retry_after
        super().__init__(detail)


class Forbidden(EdgecacheError):
    """Not allowed, whoever the client is (403): a network outside access.networks."""


class SiblingError(EdgecacheError):
    """A sibling cache could not help (gone, slow, refused, broke off); `kind` labels
    metrics. Never shown to a client: the node goes to the upstream instead."""

    def __init__(self, sibling: str, kind: str, detail: str) -> None:
        self.sibling, self.kind = sibling, kind
        super().__init__(f"sibling {sibling}: {detail}")


class ArchiveError(EdgecacheError):
    """An image archive that cannot be imported: unreadable, unsafe, or incomplete."""


class DaemonError(EdgecacheError):
    """The CLI's call to a running daemon did not go as asked; the message says what to do."""


class DaemonTimeout(DaemonError):
    """The daemon did not answer in time."""


class DiscoveryError(EdgecacheError):
    """mDNS could not start (translated from zeroconf's own errors)."""


class HopRefused(EdgecacheError):
    """A sibling asked for a blob this node is itself getting from another sibling:
    joining would chain (or loop) hops, so the asker goes to the upstream."""


class PolicyDenied(EdgecacheError):
    """A signature policy rule in enforce mode refused a manifest."""

    def __init__(self, rule: str, digest: str, reason: str) -> None:
        self.rule, self.digest, self.reason = rule, digest, reason
        super().__init__(f"policy rule {rule!r}: {digest} is not signed by its keys ({reason})")


class SupplyChainTooLarge(EdgecacheError):
    """An image's referrers and cosign tags are over limits.supply_chain_bytes."""
