"""The OCI writer: archives that skopeo (an independent reader) and Python's tarfile agree on."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from bakery.kubernetes import oci

EPOCH = 1704067200


def _archive(tmp_path: Path, name: str = "images.tar") -> tuple[Path, dict[str, str]]:
    store = oci.BlobStore(tmp_path / "store")
    payload = tmp_path / "prog"
    payload.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    shared = store.layer([oci.Entry("usr/local/bin/k8s", 0o755, source=payload)], EPOCH)
    images = []
    for component in ("kube-apiserver", "kube-scheduler"):
        links = store.layer([oci.Entry(f"usr/local/bin/{component}", link="k8s")], EPOCH)
        images.append(
            oci.Image(
                f"registry.k8s.io/{component}:v1.36.3",
                [shared, links],
                entrypoint=[f"/usr/local/bin/{component}"],
            )
        )
    out = tmp_path / name
    return out, oci.write_archive(out, store, images, EPOCH)


def test_archive_layout_shares_the_binary_layer(tmp_path: Path) -> None:
    out, digests = _archive(tmp_path)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        layout = json.load(tar.extractfile("oci-layout"))  # type: ignore[arg-type]
        manifests = [
            json.load(tar.extractfile("blobs/sha256/" + m["digest"][7:])) for m in index["manifests"]
        ]  # type: ignore[arg-type]
    assert layout == {"imageLayoutVersion": "1.0.0"}
    assert oci.read_index(out) == digests
    assert sorted(digests) == [
        "registry.k8s.io/kube-apiserver:v1.36.3",
        "registry.k8s.io/kube-scheduler:v1.36.3",
    ]
    first_layers = [layer["digest"] for layer in manifests[0]["layers"]]
    second_layers = [layer["digest"] for layer in manifests[1]["layers"]]
    assert first_layers[0] == second_layers[0]  # one shared binary layer...
    assert first_layers[1] != second_layers[1]
    assert names.count("blobs/sha256/" + first_layers[0][7:]) == 1  # ...stored once
    for m in manifests:  # every blob a manifest names is in the archive, with its size
        for desc in [m["config"], *m["layers"]]:
            assert "blobs/sha256/" + desc["digest"][7:] in names


def test_layers_are_reproducible_and_root_owned(tmp_path: Path) -> None:
    a, _ = _archive(tmp_path / "a")
    b, _ = _archive(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile("blobs/sha256/" + index["manifests"][0]["digest"][7:]))  # type: ignore[arg-type]
        layer = tar.extractfile("blobs/sha256/" + manifest["layers"][1]["digest"][7:])
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            members = inner.getmembers()
    assert [m.name for m in members] == ["usr", "usr/local", "usr/local/bin", "usr/local/bin/kube-apiserver"]
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == EPOCH for m in members)
    assert members[-1].issym() and members[-1].linkname == "k8s"


def test_layer_refuses_paths_outside_the_image(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path)
    with pytest.raises(ValueError, match="not a relative path"):
        store.layer([oci.Entry("../etc/passwd", data=b"x")], EPOCH)


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is installed by make deps")
def test_skopeo_reads_each_image(tmp_path: Path) -> None:
    out, digests = _archive(tmp_path)
    for ref, digest in digests.items():
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci-archive:{out}:{ref}"], capture_output=True, check=True
        ).stdout
        assert oci.canonical_json(json.loads(raw)) == raw  # the manifest skopeo found is ours, byte for byte
        assert "sha256:" + __import__("hashlib").sha256(raw).hexdigest() == digest
        config = json.loads(
            subprocess.run(
                ["skopeo", "inspect", "--config", f"oci-archive:{out}:{ref}"], capture_output=True, check=True
            ).stdout
        )
        assert config["architecture"] == "amd64" and config["os"] == "linux"
        assert config["config"]["Entrypoint"] == ["/usr/local/bin/" + ref.split("/")[-1].split(":")[0]]
    # skopeo can also unpack an image to a directory: the layers' contents arrive intact
    dest = tmp_path / "copied"
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci-archive:{out}:registry.k8s.io/kube-apiserver:v1.36.3", f"dir:{dest}"],
        check=True,
    )
    assert (dest / "manifest.json").exists()


def test_library_closure_keeps_the_loader_path_the_kernel_opens(tmp_path: Path) -> None:
    """The host's own /usr/bin/true (dynamic) comes with libc and /lib64/ld-linux-x86-64.so.2 as a
    path that resolves inside the image (the kernel opens the interpreter by that name)."""
    import shutil as _shutil

    from bakery import deb
    from bakery.kubernetes import payload

    tree = tmp_path / "tree"
    deb.make_merged_root(tree)
    for rel in (
        "usr/bin/true",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    ):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        _shutil.copy2("/" + rel, tree / rel)
    (tree / "usr/lib64").mkdir(exist_ok=True)
    (tree / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    paths = payload.library_closure(tree, ["usr/bin/true"])
    assert "usr/lib64/ld-linux-x86-64.so.2" in paths  # the link the kernel follows...
    assert "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" in paths  # ...and the file behind it
    assert "usr/lib/x86_64-linux-gnu/libc.so.6" in paths
