import pytest

from edgecache.errors import InvalidName, UnknownRegistry
from edgecache.pull.routing import Route, resolve

UP = {"docker.io", "registry.corp.example", "ghcr.io"}


def test_ns_wins_and_is_normalised():
    assert resolve("alpine", "registry-1.docker.io", UP, "ghcr.io") == Route("docker.io", "library/alpine")
    assert resolve("pos/app", "registry.corp.example", UP, None) == Route("registry.corp.example", "pos/app")


def test_unconfigured_ns_is_never_dialled():
    with pytest.raises(UnknownRegistry):
        resolve("pos/app", "evil.example", UP, "docker.io")


def test_path_prefix_names_a_configured_upstream():
    assert resolve("ghcr.io/owner/tool", None, UP, "docker.io") == Route("ghcr.io", "owner/tool")
    assert resolve("docker.io/nginx", None, UP, None) == Route("docker.io", "library/nginx")
    assert resolve("index.docker.io/library/nginx", None, UP, None) == Route("docker.io", "library/nginx")


def test_default_upstream_otherwise():
    assert resolve("pos/app", None, UP, "registry.corp.example") == Route("registry.corp.example", "pos/app")
    assert resolve("busybox", None, UP, "docker.io") == Route("docker.io", "library/busybox")
    with pytest.raises(UnknownRegistry):
        resolve("pos/app", None, UP, None)


def test_the_repository_part_is_validated():
    with pytest.raises(InvalidName):
        resolve("ghcr.io/../etc", None, UP, None)
    with pytest.raises(InvalidName):
        resolve("Upper/Case", None, UP, "docker.io")


def test_the_router_remembers_short_names_only_and_stays_bounded():
    from edgecache.pull.routing import Router
    router = Router(["docker.io", "ghcr.io"], "docker.io")
    assert router("team/app", "ghcr.io") == Route("ghcr.io", "team/app")
    assert len(router._known) == 1
    padded_ns = "ghcr.io" + " " * 8000              # strip()ped: it resolves
    assert router("team/app", padded_ns) == Route("ghcr.io", "team/app")
    assert len(router._known) == 1                  # resolved, not kept
    longest = "a/" * 126 + "app"                    # a valid name, 255 characters
    assert router(longest, "ghcr.io") == Route("ghcr.io", longest)
    assert len(router._known) == 2
    for n in range(router.KEPT + 10):
        router(f"team/app{n}", None)
    assert len(router._known) <= router.KEPT
    with pytest.raises(UnknownRegistry):
        router("app", "quay.io")
    assert ("app", "quay.io") not in router._known
