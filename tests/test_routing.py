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
