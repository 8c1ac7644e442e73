"""The one translation table: every domain error a request can raise has an OCI
answer, with the status and code the table gives it."""
import inspect

from edgecache import errors
from edgecache.server.oci_errors import CODES, RULES, to_oci

# Errors that never reach a client's request: start-up, CLI and background work, or
# (siblings) turned into a fill from the upstream before anyone hears of them.
NOT_FOR_CLIENTS = {errors.EdgecacheError, errors.StoreLocked, errors.DiscoveryError,
                   errors.ConfigError, errors.ListError, errors.DaemonError, errors.DaemonTimeout,
                   errors.ArchiveError,
                   errors.SiblingError, errors.NoMatchingPlatform, errors.SupplyChainTooLarge}


def _domain_errors():
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, errors.EdgecacheError) and c.__module__ == errors.__name__]


def _example(cls):
    """An instance, whatever the class's constructor wants."""
    args = {"InvalidName": ("x",), "InvalidDigest": ("x", "bad"), "UnknownRegistry": ("r",),
            "RangeNotSatisfiable": (10,), "DigestMismatch": ("a", "b"), "SizeMismatch": (1, 2),
            "BlobTooLarge": (5, 4), "UpstreamDown": ("u", 3.0), "UpstreamRateLimited": ("u",),
            "UpstreamDenied": ("u", 403), "UpstreamBadResponse": ("u", 500),
            "TooManyRequests": ("x",), "SiblingError": ("s", "k", "d"),
            "ConfigError": ("key", 1, "why"), "PolicyDenied": ("rule", "sha256:x", "why")}
    if cls.__name__ in args:
        return cls(*args[cls.__name__])
    if issubclass(cls, errors.UpstreamError):
        return cls("u", "detail")
    return cls() if cls is errors.StoreFull else cls("detail")


def test_every_domain_error_a_request_can_raise_has_an_oci_answer():
    unmapped = [c.__name__ for c in _domain_errors()
                if c not in NOT_FOR_CLIENTS and to_oci(_example(c)) is None]
    assert unmapped == []


def test_each_answer_comes_from_its_rule_and_a_code_of_the_spec():
    for cls in _domain_errors():
        oci = to_oci(_example(cls))
        if oci is None:
            continue
        assert oci.oci.code in CODES and 400 <= oci.status < 600
        rule = next(r for r in RULES if isinstance(_example(cls), r.errors)
                    and (r.when is None or r.when(_example(cls))))
        assert (oci.status, oci.message) == (rule.status, rule.message)


def test_availability_decides_between_503_and_502():
    assert to_oci(errors.UpstreamUnreachable("u", "x")).status == 503
    assert to_oci(errors.UpstreamBadResponse("u", 503)).status == 503
    assert to_oci(errors.UpstreamBadResponse("u", 404)).status == 502
    assert to_oci(errors.DigestMismatch("a", "b")).status == 502
    down = to_oci(errors.UpstreamDown("u", 2.6))
    assert down.status == 503 and down.headers == {"Retry-After": "3"}


def test_unmapped_errors_are_left_to_the_500():
    assert to_oci(RuntimeError("boom")) is None
    assert to_oci(KeyError("x")) is None


def test_aiohttp_refusals_keep_their_status_and_get_an_oci_code():
    from aiohttp import web

    from edgecache.server.oci_errors import _http_error
    allow = _http_error(web.HTTPMethodNotAllowed("PUT", ["GET", "HEAD"]))
    assert (allow.oci.code, allow.status, allow.headers["Allow"]) == ("UNSUPPORTED", 405, "GET,HEAD")
    assert (_http_error(web.HTTPNotFound()).oci.code, _http_error(web.HTTPNotFound()).status) == \
        ("NAME_UNKNOWN", 404)
    assert _http_error(web.HTTPRequestEntityTooLarge(10, 20)).status == 413
    for exc, code in ((web.HTTPUnauthorized(), "UNAUTHORIZED"), (web.HTTPForbidden(), "DENIED"),
                      (web.HTTPTooManyRequests(), "TOOMANYREQUESTS")):
        assert (_http_error(exc).oci.code, _http_error(exc).status) == (code, exc.status)
    teapot = _http_error(web.HTTPBadRequest())
    assert (teapot.oci.code, teapot.status) == ("UNKNOWN", 400)
