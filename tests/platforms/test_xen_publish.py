"""talos-bake xen: the xl configs are read by xl's own parser (libxlutil, from xen-utils, no hypervisor
needed); end to end, Debian's real pygrub extracts the kernel, initramfs and command line from a xen
image, and that kernel and initramfs boot to the init banner in QEMU."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeimage import make_image

from bakery import qemu
from bakery.cli import cli
from bakery.errors import BakeError
from bakery.fetch import sha256_of
from platforms.xen import publish
from platforms.xen.publish import XenDomain
from platforms.xen.xenstore import CONFIG_URL_KEY
from talos_os import __version__

PYGRUB = Path("/usr/lib/xen-4.17/bin/pygrub")
BOOT_TIMEOUT = 300.0
LIBXL_DISK_FORMAT_RAW = 4  # libxl_types.idl: UNKNOWN, QCOW, QCOW2, VHD, RAW, ...


class XlConfig:
    """A config file parsed by libxlutil, the library ``xl create`` parses configs with."""

    def __init__(self, text: str, name: str = "domain.cfg") -> None:
        self._xlu = ctypes.CDLL("libxlutil.so.4.17")
        self._libc = ctypes.CDLL(None)
        self._libc.fopen.restype = ctypes.c_void_p
        self._libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self._libc.fclose.argtypes = [ctypes.c_void_p]
        x = self._xlu
        x.xlu_cfg_init.restype = ctypes.c_void_p
        x.xlu_cfg_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        x.xlu_cfg_readdata.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        x.xlu_cfg_get_string.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
        ]
        x.xlu_cfg_get_long.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_long),
            ctypes.c_int,
        ]
        x.xlu_cfg_get_list.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p),
                                       ctypes.POINTER(ctypes.c_int), ctypes.c_int]  # fmt: skip
        x.xlu_cfg_get_listitem.restype = ctypes.c_char_p
        x.xlu_cfg_get_listitem.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x.xlu_disk_parse.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_void_p,
        ]
        with tempfile.NamedTemporaryFile(suffix=".errors") as report:
            stream = self._libc.fopen(report.name.encode(), b"w")
            self._cfg = x.xlu_cfg_init(stream, name.encode())
            data = text.encode()
            rc = x.xlu_cfg_readdata(self._cfg, data, len(data))
            self._libc.fclose(stream)
            self.errors = Path(report.name).read_text()
        if rc != 0:
            raise ValueError(f"xl cannot parse {name}: {self.errors.strip()}")

    def string(self, key: str) -> str:
        value = ctypes.c_char_p()
        assert self._xlu.xlu_cfg_get_string(self._cfg, key.encode(), ctypes.byref(value), 0) == 0, key
        assert value.value is not None
        return value.value.decode()

    def long(self, key: str) -> int:
        value = ctypes.c_long()
        assert self._xlu.xlu_cfg_get_long(self._cfg, key.encode(), ctypes.byref(value), 0) == 0, key
        return value.value

    def list(self, key: str) -> list[str]:
        handle, count = ctypes.c_void_p(), ctypes.c_int()
        assert (
            self._xlu.xlu_cfg_get_list(self._cfg, key.encode(), ctypes.byref(handle), ctypes.byref(count), 0)
            == 0
        )
        items = [self._xlu.xlu_cfg_get_listitem(handle, i) for i in range(count.value)]
        return [i.decode() for i in items if i is not None]

    def has(self, key: str) -> bool:
        value = ctypes.c_char_p()
        return self._xlu.xlu_cfg_get_string(self._cfg, key.encode(), ctypes.byref(value), 1) == 0

    def disk(self, spec: str) -> tuple[str, str, int]:
        """xl's disk-spec parser: (target path, vdev, libxl disk format)."""
        libxl = ctypes.CDLL("libxenlight.so.4.17")
        disk = ctypes.create_string_buffer(4096)  # larger than libxl_device_disk
        libxl.libxl_device_disk_init(disk)
        specs = (ctypes.c_char_p * 1)(spec.encode())
        assert self._xlu.xlu_disk_parse(self._cfg, 1, specs, disk) == 0, spec
        # libxl_device_disk starts: uint32 backend_domid; char *backend_domname, *pdev_path, *vdev;
        # int backend; int format
        ptrs = ctypes.cast(disk, ctypes.POINTER(ctypes.c_char_p))
        ints = ctypes.cast(disk, ctypes.POINTER(ctypes.c_int))
        target, vdev = ptrs[2], ptrs[3]
        assert target is not None and vdev is not None
        return target.decode(), vdev.decode(), ints[9]


def _domain(tmp_path: Path) -> XenDomain:
    return XenDomain(name="node-1", disk=tmp_path / "talos-xen.raw", memory_mib=1536, vcpus=3, bridge="br9")


def test_hvm_config_is_xl_syntax_with_the_expected_keys(tmp_path: Path) -> None:
    d = _domain(tmp_path)
    cfg = XlConfig(publish.hvm_config(d), "hvm.cfg")
    assert cfg.errors == ""
    assert cfg.string("name") == "node-1" and cfg.string("type") == "hvm" and cfg.string("firmware") == "bios"
    assert cfg.long("memory") == 1536 and cfg.long("vcpus") == 3
    assert cfg.string("serial") == "pty"
    assert cfg.list("vif") == ["bridge=br9"]
    [spec] = cfg.list("disk")
    assert spec == f"format=raw, vdev=xvda, access=rw, target={d.disk}"
    assert cfg.disk(spec) == (str(d.disk), "xvda", LIBXL_DISK_FORMAT_RAW)
    assert not cfg.has("bootloader")
    assert cfg.string("on_reboot") == "restart"


def test_pv_config_boots_through_pygrub_with_the_xen_console(tmp_path: Path) -> None:
    d = _domain(tmp_path)
    cfg = XlConfig(publish.pv_config(d), "pv.cfg")
    assert cfg.errors == ""
    assert cfg.string("type") == "pv" and cfg.string("bootloader") == "pygrub"
    assert cfg.string("extra") == "console=hvc0"
    assert cfg.long("memory") == 1536 and cfg.long("vcpus") == 3
    assert cfg.disk(cfg.list("disk")[0]) == (str(d.disk), "xvda", LIBXL_DISK_FORMAT_RAW)
    assert not cfg.has("serial") and not cfg.has("firmware")


def test_xl_strings_survive_quotes_and_backslashes(tmp_path: Path) -> None:
    tricky = 'node "one" \\ two'
    cfg = XlConfig(publish.hvm_config(XenDomain(name=tricky, disk=tmp_path / "x.raw")))
    assert cfg.string("name") == tricky
    with pytest.raises(BakeError, match="line break"):
        publish.xl_string("a\nb")


def test_the_parser_used_here_rejects_what_xl_rejects() -> None:
    with pytest.raises(ValueError, match="syntax error"):
        XlConfig('name = "x"\ndisk = [ "a", \n')


def test_paths_xl_cannot_carry_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BakeError, match="comma"):
        publish.pv_config(XenDomain(name="n", disk=tmp_path / "a,b.raw"))
    with pytest.raises(BakeError, match="absolute"):
        XenDomain(name="n", disk=Path("rel.raw"))


def test_vm_data_howto_writes_the_key_the_guest_reads() -> None:
    text = publish.vm_data_howto("node-1", "/srv/node-1-pv.cfg", "http://10.0.0.5/n1.yaml")
    assert "xl create -p /srv/node-1-pv.cfg" in text
    assert f"xenstore-write /local/domain/$domid/{CONFIG_URL_KEY} http://10.0.0.5/n1.yaml" in text
    assert f"xe vm-param-set uuid=<vm-uuid> xenstore-data:{CONFIG_URL_KEY}=http://10.0.0.5/n1.yaml" in text
    assert "xl unpause node-1" in text


def test_cli_publishes_an_existing_raw_image(tmp_path: Path) -> None:
    image = make_image(tmp_path / "talos-xen.raw", "xen")
    baked = image.read_bytes()
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["xen", "--image", str(image), "--out", str(out), "--name", "n1"])
    assert result.exit_code == 0, result.output
    disk = out / "n1.raw"
    lines = result.stdout.splitlines()
    assert lines == [str(disk), str(out / "n1-hvm.cfg"), str(out / "n1-pv.cfg"), str(out / "n1-vm-data.txt")]
    for cfg in ("n1-pv.cfg", "n1-hvm.cfg"):  # the guest writes a copy, never the baked image
        xl = XlConfig((out / cfg).read_text())
        assert xl.disk(xl.list("disk")[0])[0] == str(disk)
    assert disk.read_bytes() == baked and not disk.samefile(image)
    with open(disk, "r+b") as f:  # what booting does to the disk
        f.write(b"written by the guest")
    assert image.read_bytes() == baked
    assert "xenstore-write" in (out / "n1-vm-data.txt").read_text()
    assert not list(out.glob(".*partial*"))


def test_cli_refuses_qcow2_and_another_platform(tmp_path: Path) -> None:
    image = make_image(tmp_path / "talos.qcow2", "xen", fmt="qcow2")
    result = CliRunner().invoke(cli, ["xen", "--image", str(image), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "pygrub cannot read" in result.output
    result = CliRunner().invoke(
        cli, ["xen", "--platform", "aws", "--out", str(tmp_path)]
    )  # it only bakes for xen
    assert result.exit_code == 2 and "talos-bake xen only bakes xen images: drop --platform" in result.output
    assert "--platform" not in CliRunner().invoke(cli, ["xen", "--help"]).output
    result = CliRunner().invoke(
        cli, ["xen", "--image", str(image), "--out", str(tmp_path), "--disk-size", "4G"]
    )
    assert result.exit_code == 1 and "--disk-size only applies when baking" in result.output


# --- end to end: a xen image, Debian's pygrub, QEMU ------------------------------------------------


@dataclass
class Published:
    image: Path
    hvm: Path
    pv: Path
    howto: Path
    kernel: Path
    initramfs: Path


@pytest.fixture(scope="session")
def xen_published(test_lock: Path, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """``talos-bake xen`` bakes a xen image and writes its configs (one bake per test run)."""
    build = Path(os.environ.get("TALOS_TEST_BUILD", Path(__file__).resolve().parents[2] / "_build" / "test"))
    out = build.resolve() / "xen-publish"
    proc = subprocess.run(
        [sys.executable, "-m", "bakery.cli", "xen", "--out", str(out), "--lock", str(test_lock), "--memory", "1024"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    image, hvm, pv, howto = (Path(line) for line in proc.stdout.splitlines())
    return Published(image, hvm, pv, howto, out / "talos-xen-vmlinuz", out / "talos-xen-initramfs.zst")


@dataclass
class Extracted:
    kernel: Path
    ramdisk: Path
    args: str


def pygrub(image: Path, dest: Path, args: str | None = None) -> Extracted:
    """Run Debian's pygrub as libxl does for a PV domain (``extra`` goes in as --args)."""
    argv = [str(PYGRUB), "-q", "--output-format=simple0", f"--output-directory={dest}"]
    if args:
        argv.append(f"--args={args}")
    proc = subprocess.run([*argv, str(image)], capture_output=True, check=True)
    fields = dict(item.decode().split(" ", 1) for item in proc.stdout.split(b"\0") if item)
    return Extracted(Path(fields["kernel"]), Path(fields["ramdisk"]), fields.get("args", ""))


@pytest.fixture
def extracted(xen_published: Published, tmp_path: Path) -> Iterator[Extracted]:
    yield pygrub(xen_published.image, tmp_path)


@pytest.mark.e2e
def test_published_configs_point_at_the_xen_image(xen_published: Published) -> None:
    for path in (xen_published.hvm, xen_published.pv):
        cfg = XlConfig(path.read_text(), path.name)
        assert cfg.disk(cfg.list("disk")[0]) == (str(xen_published.image), "xvda", LIBXL_DISK_FORMAT_RAW)
        assert cfg.long("memory") == 1024
    baked = xen_published.image.with_name("talos-xen.raw")
    assert xen_published.image.name == "talos.raw" and baked.exists(), (
        "the domain's disk is a copy of the bake"
    )


@pytest.mark.e2e
def test_pygrub_lists_the_boot_entries(xen_published: Published) -> None:
    listing = subprocess.run([str(PYGRUB), "-l", str(xen_published.image)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert re.findall(r"^title: (.+)$", listing, re.MULTILINE) == ["talos-os A", "talos-os B"]
    assert "kernel: /boot/A/vmlinuz" in listing and "initrd: /boot/A/initramfs.zst" in listing


@pytest.mark.e2e
def test_pygrub_extracts_kernel_initramfs_and_cmdline_as_libxl_would(
    xen_published: Published, tmp_path: Path
) -> None:
    extra = XlConfig(xen_published.pv.read_text()).string("extra")
    got = pygrub(xen_published.image, tmp_path, args=extra)
    assert sha256_of(got.kernel) == sha256_of(xen_published.kernel)
    assert sha256_of(got.ramdisk) == sha256_of(xen_published.initramfs)
    words = got.args.split()
    assert "talos.platform=xen" in words and "talos.root=ROOT-A" in words
    assert words[-1] == "console=hvc0", "the PV console comes last, so it is /dev/console"


@pytest.mark.e2e
def test_pygrub_extracted_kernel_boots_to_the_banner(xen_published: Published, extracted: Extracted) -> None:
    # QEMU has a UART, not the Xen console: boot with the entry's own command line (console=ttyS0).
    assert "talos.platform=xen" in extracted.args.split()
    vm = qemu.start(
        xen_published.image, kernel=extracted.kernel, initrd=extracted.ramdisk, append=extracted.args
    )
    with vm:
        match, seconds = vm.wait_for(qemu.BANNER, BOOT_TIMEOUT)
    assert match.group(1) == __version__ and match.group(2) == "xen"
    print(f"xen: pygrub-extracted kernel reached the banner after {seconds:.1f} s")
