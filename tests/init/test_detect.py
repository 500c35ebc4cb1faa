"""Platform detection from a fake sysfs/procfs tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from talos_os.init import detect


def make_tree(root: Path, files: dict[str, str], dirs: tuple[str, ...] = ()) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    for rel in dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return root


DMI = "sys/class/dmi/id"


@pytest.mark.parametrize(
    ("files", "dirs", "expected"),
    [
        ({f"{DMI}/sys_vendor": "Amazon EC2", f"{DMI}/product_name": "m5.large"}, (), "aws"),
        ({f"{DMI}/product_uuid": "EC2E1916-9099-7CAF-FD21-012345ABCDEF"}, (), "aws"),
        ({f"{DMI}/product_uuid": "45E12AEC-DCD1-B213-94ED-012345ABCDEF"}, (), "aws"),  # little-endian
        # Xen-based EC2: the hypervisor says xen but the uuid says EC2, and AWS wins.
        (
            {"sys/hypervisor/type": "xen", "sys/hypervisor/uuid": "ec2f0e2a-1234-5678-9abc-def012345678"},
            (),
            "aws",
        ),
        ({"sys/hypervisor/type": "xen"}, (), "xen"),
        ({}, ("proc/xen",), "xen"),
        ({f"{DMI}/sys_vendor": "Xen", f"{DMI}/product_name": "HVM domU"}, (), "xen"),
        ({f"{DMI}/sys_vendor": "QEMU", f"{DMI}/product_name": "Standard PC (Q35 + ICH9, 2009)"}, (), "kvm"),
        ({}, ("sys/firmware/qemu_fw_cfg",), "kvm"),
        ({f"{DMI}/sys_vendor": "Dell Inc.", f"{DMI}/product_name": "PowerEdge R640"}, (), "bare-metal"),
        ({}, (), "bare-metal"),
    ],
)
def test_detect_from_tree(
    tmp_path: Path, files: dict[str, str], dirs: tuple[str, ...], expected: str
) -> None:
    root = make_tree(tmp_path, {"proc/cmdline": "ro quiet", **files}, dirs)
    result = detect.detect_with_reason(root)
    assert result.name == expected, result
    assert result.reason
    assert detect.detect(root) == expected


def test_cmdline_wins_over_hardware(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {f"{DMI}/sys_vendor": "Amazon EC2", "proc/cmdline": "talos.platform=kvm"})
    d = detect.detect_with_reason(root)
    assert d.name == "kvm"
    assert "talos.platform=kvm" in d.reason


def test_cmdline_argument_overrides_proc(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"proc/cmdline": "talos.platform=aws"})
    assert detect.detect(root, cmdline="talos.platform=bare_metal") == "bare-metal"
    assert detect.detect(root, cmdline="quiet") == "bare-metal"


def test_aliases() -> None:
    assert detect.normalize("Metal") == "bare-metal"
    assert detect.normalize("qemu") == "kvm"
    assert detect.normalize("xen") == "xen"
    assert detect.normalize("something-new") == "something-new"


def test_unreadable_files_are_ignored(tmp_path: Path) -> None:
    # product_uuid is root-only on a real system; a directory in its place stands in for "unreadable".
    root = make_tree(tmp_path, {"proc/cmdline": ""}, (f"{DMI}/product_uuid",))
    assert detect.detect(root) == "bare-metal"


def test_platforms_are_asked_in_their_order_and_none_left_is_an_error(tmp_path: Path) -> None:
    """Detection is the plugins' own: without the fallback plugin, an unclaimed machine is refused."""
    from talos_os.plugins import discover

    plugins = discover()
    assert [p.name for p in sorted(plugins.values(), key=lambda p: p.detect_order)] == [
        "aws",
        "xen",
        "kvm",
        "bare-metal",
    ]
    without_fallback = {name: p for name, p in plugins.items() if name != "bare-metal"}
    root = make_tree(tmp_path, {"proc/cmdline": "quiet"})
    with pytest.raises(detect.NoPlatformError, match=r"boot with talos.platform=NAME"):
        detect.detect_with_reason(root, plugins=without_fallback)
    assert detect.normalize("ec2", without_fallback) == "aws"
