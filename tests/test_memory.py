"""The daemon's resident memory: what it does not load unless configured, and the
malloc arena cap (edgecache/memory.py)."""
import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {m.split(".")[0] for m in out.split()}


def test_no_policy_and_no_mdns_load_neither_cryptography_nor_zeroconf():
    # Everything `edgecache serve` imports to run with the embedded default config.
    loaded = _modules_after("import edgecache.cli, edgecache.server.app, edgecache.runtime\n"
                            "from edgecache.policy.rules import Policy\n"
                            "Policy((), None, None, {})")
    assert "aiohttp" in loaded and "edgecache" in loaded
    assert "cryptography" not in loaded and "zeroconf" not in loaded


def test_cryptography_is_loaded_when_a_signature_is_first_checked():
    out = subprocess.run([sys.executable, "-c", """
import sys
from edgecache.policy.cosign import Signature, check
print("cryptography" in sys.modules)
print(check(Signature(b"{}", "AAAA", "tag x.sig"), [], "sha256:00", lambda r: True))
print("cryptography" in sys.modules)
"""], capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    assert out == ["False", "tag x.sig: signature does not verify with the rule's keys", "True"]


def test_the_arena_cap_is_taken_by_glibc():
    out = subprocess.run([sys.executable, "-c", "from edgecache.memory import cap_malloc_arenas\n"
                          "print(cap_malloc_arenas())"], capture_output=True, text=True, check=True,
                         timeout=60).stdout.strip()
    import platform
    assert out == ("True" if platform.libc_ver()[0] == "glibc" else out)


def test_a_served_process_maps_neither(tmp_path):
    """The real daemon, as started: its address space has no cryptography or zeroconf
    library mapped (each costs megabytes resident)."""
    from tests.support.edge import EdgeProcess, make_config
    doc = make_config(tmp_path / "data", {"central.example": "http://127.0.0.1:9"},
                      default="central.example")
    with EdgeProcess(tmp_path, doc) as edge:
        assert edge.proc is not None
        maps = open(f"/proc/{edge.proc.pid}/maps").read()
    assert "aiohttp" in maps                      # its compiled parts are mapped: the check sees them
    assert "cryptography" not in maps and "zeroconf" not in maps
