"""siblings/hopauth.py: a signed hop request is accepted once, by the node named,
within the window; anything else says why it is refused."""
from edgecache.siblings import hopauth
from edgecache.siblings.hopauth import AUTH, HOP, HopVerifier, sign

SECRET = b"branch-secret-0123456789abcdef"
PATH = "/v2/library/app/blobs/sha256:" + "a" * 64 + "?ns=docker.io"


def test_a_signed_request_is_accepted_once():
    v = HopVerifier(SECRET, "n2", clock=lambda: 1000.0)
    h = sign(SECRET, "n1", "n2", "get", PATH, now=1000.0)
    assert h[HOP] == "n1"
    assert v.verify("n1", h[AUTH], "GET", PATH) is None
    assert v.verify("n1", h[AUTH], "GET", PATH) == "replayed hop request"


def test_what_is_refused_and_why():
    v = HopVerifier(SECRET, "n2", clock=lambda: 1000.0)
    good = sign(SECRET, "n1", "n2", "GET", PATH, now=1000.0)[AUTH]
    assert v.verify("n1", None, "GET", PATH) == "hop request without a signature"
    assert v.verify("n1", "a:b", "GET", PATH) == "malformed hop signature"
    assert "not for this node" in v.verify("n1", sign(SECRET, "n1", "n3", "GET", PATH,
                                                     now=1000.0)[AUTH], "GET", PATH)
    assert "off" in v.verify("n1", sign(SECRET, "n1", "n2", "GET", PATH, now=900.0)[AUTH],
                             "GET", PATH)
    assert v.verify("n1", good, "GET", PATH + "&x=1") == "wrong hop signature"    # path changed
    assert v.verify("n0", good, "GET", PATH) == "wrong hop signature"            # sender changed
    assert v.verify("n1", sign(b"another-secret-0123456789", "n1", "n2", "GET", PATH,
                               now=1000.0)[AUTH], "GET", PATH) == "wrong hop signature"


def test_an_unaddressed_signature_is_good_for_the_health_check_only():
    v = HopVerifier(SECRET, "n2", clock=lambda: 1000.0)
    ping = sign(SECRET, "n1", None, "GET", hopauth.PING_PATH + "?challenge=x", now=1000.0)[AUTH]
    assert v.verify("n1", ping, "GET", hopauth.PING_PATH + "?challenge=x") is None
    blob = sign(SECRET, "n1", None, "GET", PATH, now=1000.0)[AUTH]
    assert "not for this node" in v.verify("n1", blob, "GET", PATH)


def test_nonces_are_forgotten_after_the_window(monkeypatch):
    """At most MAX_REMEMBERED nonces in a window (past that, signed requests wait);
    once the window has passed, they are forgotten and room is made."""
    monkeypatch.setattr(hopauth, "MAX_REMEMBERED", 50)
    now = [1000.0]
    v = HopVerifier(SECRET, "n2", clock=lambda: now[0])

    def ask():
        return v.verify("n1", sign(SECRET, "n1", "n2", "GET", PATH, now=now[0])[AUTH], "GET", PATH)

    assert all(ask() is None for _ in range(50))
    assert ask() == "too many hop requests in the last minute"
    now[0] += 2 * hopauth.WINDOW + 1
    assert all(ask() is None for _ in range(50))          # the old ones expired


def test_unsigned_without_a_secret_and_proofs_bound_to_node_and_challenge():
    assert sign(None, "n1", "n2", "GET", PATH) == {HOP: "n1"}
    p = hopauth.proof(SECRET, "n1", "c1")
    assert p != hopauth.proof(SECRET, "n2", "c1") and p != hopauth.proof(SECRET, "n1", "c2")
    assert hopauth.nonce_of(sign(SECRET, "n1", "n2", "GET", PATH)[AUTH])
    assert hopauth.nonce_of(None) == "" and hopauth.nonce_of("junk") == ""
