import pytest

from edgecache.errors import InvalidDigest, InvalidName
from edgecache.reference import parse_digest, validate_name, validate_tag

HEX = "a" * 64


@pytest.mark.parametrize("name", ["a", "library/alpine", "pos/backend-api", "a.b_c__d/e-f--g", "x/" * 50 + "y"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "a/../b", "A", "a//b", "/a", "a/", "-a", "a_", "ü", "a b",
                                  "a%2fb", "x" * 256, "a/./b"])
def test_invalid_names(name):
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A" * 128])
def test_valid_tags(tag):
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a/b", "a:b"])
def test_invalid_tags(tag):
    with pytest.raises(InvalidName):
        validate_tag(tag)


def test_digests():
    d = parse_digest("sha256:" + HEX)
    assert (d.algorithm, d.hex, str(d)) == ("sha256", HEX, "sha256:" + HEX)
    assert parse_digest("sha512:" + "b" * 128).algorithm == "sha512"


@pytest.mark.parametrize("value", ["sha256:" + HEX[:-1], "sha256:" + "A" * 64, "sha256:" + "g" * 64,
                                   "md5:" + "a" * 32, "sha256", "sha256:", ":" + HEX,
                                   "sha256:" + HEX + "/../x", "sha256:" + HEX + "a"])
def test_invalid_digests(value):
    with pytest.raises(InvalidDigest):
        parse_digest(value)
