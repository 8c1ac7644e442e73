"""Air-gapped seeding: archives made by real tools (skopeo's docker-archive: and
oci-archive:, a multi-image docker-archive like K3s's air-gap tarball, gzip and zstd
compressed) imported with `edgecache import`, then pulled through an edgecache whose
upstream cannot be reached, by skopeo. Hostile archives are refused."""
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
import zstandard

from tests.conftest import require_binaries
from tests.support.edge import EdgeProcess, make_config
from tests.support.images import make_image, push
from tests.support.ports import free_port

pytestmark = pytest.mark.integration
NOWHERE = "http://127.0.0.1:9"          # the WAN is not there


def skopeo(*args, timeout=120):
    r = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def edgecache(config: Path, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgecache", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def archives(tmp_path, registry):
    """Two images in the real registry, copied out by skopeo as archives."""
    require_binaries("skopeo")
    host = registry.url.split("://")[1]
    one, two = make_image(41, layers=2), make_image(42, layers=3, media="docker")
    push(registry.url, "demo/app", "v1", one)
    push(registry.url, "demo/tool", "v2", two)
    out = tmp_path / "archives"
    out.mkdir()
    src = ["--src-tls-verify=false", f"docker://{host}/demo/app:v1"]
    skopeo("copy", *src, f"docker-archive:{out}/app.docker.tar:registry.example/demo/app:v1")
    skopeo("copy", *src, f"oci-archive:{out}/app.oci.tar:registry.example/demo/app:v1")
    skopeo("copy", "--src-tls-verify=false", f"docker://{host}/demo/tool:v2",
           f"docker-archive:{out}/tool.docker.tar:registry.example/demo/tool:v2")
    return out, one, two


def _config(tmp_path: Path, name: str = "edge") -> tuple[Path, dict]:
    work = tmp_path / name
    work.mkdir(exist_ok=True)
    doc = make_config(work / "data", {"registry.example": NOWHERE}, default="registry.example",
                      port=free_port())
    path = work / "edgecache.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, doc


def _pull(edge_url: str, repo_tag: str, dest: Path) -> list[str]:
    """skopeo copies through the cache; the layer digests it wrote (uncompressed ones
    for a docker-archive: that is what such an archive holds)."""
    host = edge_url.split("://")[1]
    skopeo("copy", "--src-tls-verify=false", f"docker://{host}/{repo_tag}", f"dir:{dest}")
    manifest = json.loads((dest / "manifest.json").read_bytes())
    for layer in manifest["layers"]:
        data = (dest / layer["digest"].split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
    return [layer["digest"] for layer in manifest["layers"]]


def _k3s_style(out: Path, parts: list[Path], dest: Path) -> Path:
    """One docker-archive holding several images (manifest.json with one entry each),
    as `docker save a b c` and K3s's air-gap image tarballs are."""
    entries, seen = [], set()
    with tarfile.open(dest, "w") as tf:
        for part in parts:
            with tarfile.open(part) as src:
                entries += json.loads(src.extractfile("manifest.json").read())
                for m in src.getmembers():
                    if m.name not in ("manifest.json", "repositories") and m.name not in seen:
                        seen.add(m.name)
                        tf.addfile(m, src.extractfile(m) if m.isfile() else None)
        body = json.dumps(entries).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        tf.addfile(info, io.BytesIO(body))
    return dest


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "docker-archive.gz",
                                  "oci-archive.zst"])
def test_an_imported_archive_pulls_with_the_upstream_unreachable(tmp_path, archives, kind):
    out, one, _ = archives
    src = out / ("app.oci.tar" if kind.startswith("oci") else "app.docker.tar")
    if kind.endswith(".gz"):
        packed = tmp_path / "app.tar.gz"
        packed.write_bytes(gzip.compress(src.read_bytes()))
        src = packed
    elif kind.endswith(".zst"):
        packed = tmp_path / "app.tar.zst"
        packed.write_bytes(zstandard.ZstdCompressor().compress(src.read_bytes()))
        src = packed
    config, doc = _config(tmp_path)
    r = edgecache(config, "import", str(src))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [i["ref"] for i in report["images"]] == ["registry.example/demo/app:v1"]
    assert "unpacking" in r.stderr and "imported" in r.stderr         # progress shown
    with EdgeProcess(tmp_path / "edge", doc) as edge:
        layers = _pull(edge.url, "demo/app:v1", tmp_path / "pulled")
    if kind.startswith("oci"):
        # An OCI layout keeps the registry's digests: the same image, by digest too.
        assert layers == [b.digest for b in one.layers]
    else:
        assert len(layers) == len(one.layers)


def test_a_k3s_style_archive_of_several_images_imports_pinned(
        tmp_path, archives):
    out, one, two = archives
    k3s = _k3s_style(out, [out / "app.docker.tar", out / "tool.docker.tar"], tmp_path / "k3s.tar")
    packed = tmp_path / "k3s-airgap-images-amd64.tar.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(k3s.read_bytes()))
    config, doc = _config(tmp_path)
    r = edgecache(config, "import", "--pin", str(packed))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert sorted(i["ref"] for i in report["images"]) == [
        "registry.example/demo/app:v1", "registry.example/demo/tool:v2"]
    assert all(i["pinned"] for i in report["images"])
    with EdgeProcess(tmp_path / "edge", doc) as edge:
        assert len(_pull(edge.url, "demo/app:v1", tmp_path / "a")) == 2
        assert len(_pull(edge.url, "demo/tool:v2", tmp_path / "t")) == 3
        import urllib.request
        st = json.loads(urllib.request.urlopen(edge.url + "/_edgecache/status").read())
        assert st["store"]["pinned_bytes"] > 0 and st["store"]["unpinned_bytes"] == 0


def test_import_through_a_running_daemon(tmp_path, archives):
    out, one, _ = archives
    config, doc = _config(tmp_path)
    with EdgeProcess(tmp_path / "edge", doc) as edge:
        r = edgecache(config, "import", str(out / "app.oci.tar"))
        assert r.returncode == 0, r.stderr
        assert "imported" in r.stderr
        assert json.loads(r.stdout)["images"][0]["ref"] == "registry.example/demo/app:v1"
        assert _pull(edge.url, "demo/app:v1", tmp_path / "p") == [b.digest for b in one.layers]
        # Again: nothing new, everything linked.
        again = json.loads(edgecache(config, "import", str(out / "app.oci.tar")).stdout)
        assert again["new_blobs"] == 0 and len(again["images"]) == 1


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("members,why", [
    ([(_member("../escape"), b"x")], "outside the archive"),
    ([(_member("/etc/evil"), b"x")], "outside the archive"),
    ([(_member("blobs/link", tarfile.SYMTYPE, "../../../etc/passwd"), None)],
     "outside the archive"),
    ([(_member("dev", tarfile.CHRTYPE), None)], "not a file"),
    ([(_member("junk.txt"), b"hello")], "neither an OCI image layout"),
])
def test_hostile_or_foreign_archives_are_refused_and_nothing_lands(tmp_path, members, why):
    config, doc = _config(tmp_path)
    bad = _tar(tmp_path / "bad.tar", members)
    r = edgecache(config, "import", str(bad))
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["images"] == [] and why in report["skipped"][0], report
    assert not list(tmp_path.rglob("escape")) and not Path("/etc/evil").exists()
    data = Path(doc["data_dir"])
    assert not list((data / "blobs").rglob("*")) or all(p.is_dir() for p in (data / "blobs").rglob("*"))
    assert list((data / "tmp").iterdir()) == []            # the unpacked copy is gone


def test_a_tampered_blob_is_refused_and_not_stored(tmp_path, archives):
    out, one, _ = archives
    layer = one.layers[0].digest.split(":")[1]
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(out / "app.oci.tar") as src, tarfile.open(tampered, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name == f"blobs/sha256/{layer}":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    config, doc = _config(tmp_path)
    r = edgecache(config, "import", str(tampered))
    assert r.returncode == 1
    assert "has the bytes of" in json.loads(r.stdout)["skipped"][0]
    assert not (Path(doc["data_dir"]) / "blobs" / "sha256" / layer[:2] / layer).exists()


def test_export_the_pinned_set_then_import_on_a_second_cache_and_ctr_pulls_offline(
        tmp_path, archives):
    """Box A: a K3s-style archive imported pinned, exported (once through its daemon,
    once without one). Box B, never online: imports the export, and containerd's ctr
    (a hosts dir, as K3s) pulls both images from it, the same digests as on A."""
    from tests.conftest import require_containerd
    from tests.support.containerd import Containerd, write_hosts_toml
    out, one, two = archives
    k3s = _k3s_style(out, [out / "app.docker.tar", out / "tool.docker.tar"], tmp_path / "k3s.tar")
    config_a, doc_a = _config(tmp_path, "a")
    assert edgecache(config_a, "import", "--pin", str(k3s)).returncode == 0
    offline = tmp_path / "usb" / "pinned.tar.zst"
    offline.parent.mkdir()
    r = edgecache(config_a, "export", "--pinned", str(offline))
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout)
    assert sorted(exported["images"]) == ["registry.example/demo/app:v1",
                                          "registry.example/demo/tool:v2"]
    with EdgeProcess(tmp_path / "a", doc_a) as a:
        via_daemon = tmp_path / "usb" / "pinned-daemon.tar"
        r = edgecache(config_a, "export", "--pinned", str(via_daemon))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["images"] == exported["images"]
        digests_a = {ref: head_digest(a.url, ref) for ref in ("demo/app:v1", "demo/tool:v2")}
    config_b, doc_b = _config(tmp_path, "b")
    r = edgecache(config_b, "import", str(offline))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["new_blobs"] == exported["blobs"]
    with EdgeProcess(tmp_path / "b", doc_b) as b:
        for ref, digest in digests_a.items():
            assert head_digest(b.url, ref) == digest               # the same manifests
        require_containerd()
        hosts = tmp_path / "certs.d"
        write_hosts_toml(hosts, "registry.example", b.url)
        with Containerd(tmp_path / "ctrd") as ctrd:
            for ref in ("registry.example/demo/app:v1", "registry.example/demo/tool:v2"):
                r = ctrd.pull(ref, hosts)
                assert r.returncode == 0, r.stderr + ctrd.log_tail()


def head_digest(base: str, ref: str) -> str:
    """The digest the cache answers for repo:tag (the manifest's own, by HEAD)."""
    import urllib.request
    repo, _, tag = ref.partition(":")
    req = urllib.request.Request(f"{base}/v2/{repo}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["Docker-Content-Digest"]


def test_export_brings_the_signature_tags_of_pinned_images(tmp_path, registry, archives):
    """A cosign-style `sha256-<hex>.sig` tag held here goes out with the pinned image it
    signs, though it was not pinned itself."""
    out, one, _ = archives
    host = registry.url.split("://")[1]
    digest = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{host}/demo/app:v1"],
        capture_output=True, text=True, check=True, timeout=60).stdout)["Digest"]
    sig_tag = f"sha256-{digest.split(':')[1]}.sig"
    push(registry.url, "demo/app", sig_tag, make_image(43, layers=1, layer_size=1024))
    skopeo("copy", "--src-tls-verify=false", f"docker://{host}/demo/app:{sig_tag}",
           f"oci-archive:{out}/sig.oci.tar:registry.example/demo/app:{sig_tag}")
    config, doc = _config(tmp_path)
    assert edgecache(config, "import", "--pin", str(out / "app.oci.tar")).returncode == 0
    assert edgecache(config, "import", str(out / "sig.oci.tar")).returncode == 0    # not pinned
    dest = tmp_path / "pinned.tar"
    r = edgecache(config, "export", "--pinned", str(dest))
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["images"]) == [
        f"registry.example/demo/app:{sig_tag}", "registry.example/demo/app:v1"]
    with tarfile.open(dest) as tf:
        index = json.loads(tf.extractfile("index.json").read())
        names = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}
        assert names == {f"registry.example/demo/app:{sig_tag}", "registry.example/demo/app:v1"}
        assert any(m["digest"] == digest for m in index["manifests"])   # the registry's own


def test_through_the_daemon_only_an_admin_may_import_or_export(tmp_path, archives):
    """A node's token is not enough to put images under a route (every client of that
    route would be served them): import and export through the daemon need a name in
    access.admin. The daemon is sent the archive; it opens no path it is given."""
    out, one, _ = archives
    config, doc = _config(tmp_path)
    (tmp_path / "tokens").write_text("node:tok-node\nops:tok-ops\n")
    doc["access"] = {"tokens_file": str(tmp_path / "tokens"), "admin": ["ops"]}
    config.write_text(yaml.safe_dump(doc))
    node, ops = tmp_path / "node.creds", tmp_path / "ops.creds"
    node.write_text("tok-node\n")
    ops.write_text("tok-ops\n")
    with EdgeProcess(tmp_path / "edge", doc):
        r = edgecache(config, "import", "--credentials-file", str(node), str(out / "app.oci.tar"))
        assert r.returncode == 1 and "access.admin" in r.stderr, r.stderr
        r = edgecache(config, "export", "--credentials-file", str(node), "--pinned",
                      str(tmp_path / "x.tar"))
        assert r.returncode == 1 and "access.admin" in r.stderr, r.stderr
        assert not (tmp_path / "x.tar").exists()
        r = edgecache(config, "import", "--pin", "--credentials-file", str(ops),
                      str(out / "app.oci.tar"))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["images"][0]["ref"] == "registry.example/demo/app:v1"
        r = edgecache(config, "export", "--credentials-file", str(ops), "--pinned",
                      str(tmp_path / "pinned.tar.gz"))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["images"] == ["registry.example/demo/app:v1"]
        with open(tmp_path / "pinned.tar.gz", "rb") as f:
            assert f.read(2) == b"\x1f\x8b"                        # compressed as named
        assert list((Path(doc["data_dir"]) / "tmp").iterdir()) == []   # nothing left behind


def test_a_blob_already_held_is_linked_only_when_the_archive_has_its_bytes(tmp_path, archives):
    """An archive that names a digest held here (another route's) but carries other
    bytes for it links nothing: the store's copy is never lent on the archive's word."""
    out, one, _ = archives
    config, doc = _config(tmp_path)
    assert edgecache(config, "import", str(out / "app.oci.tar")).returncode == 0
    layer = one.layers[0].digest.split(":")[1]
    forged = tmp_path / "forged.tar"
    with tarfile.open(out / "app.oci.tar") as src, tarfile.open(forged, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name == "index.json":
                data = data.replace(b"registry.example/demo/app:v1", b"registry.example/evil/x:1")
            if m.name == f"blobs/sha256/{layer}":
                data = b"junk"
            if data is not None:
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    r = edgecache(config, "import", str(forged))
    assert r.returncode == 1 and "has the bytes of" in json.loads(r.stdout)["skipped"][0]
    with EdgeProcess(tmp_path / "edge", doc) as edge:
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{edge.url}/v2/evil/x/blobs/sha256:{layer}", timeout=10)
        assert e.value.code >= 400                 # not served: never linked to evil/x
