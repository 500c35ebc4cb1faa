"""talos-bake refuses what cannot be right before any bake, download, conversion or write.

Every refusal here runs with a --cache and --out that must stay absent: a command that started a bake
(or wrote its outputs) before checking would create them. Each must also answer within a second.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from fakeimage import make_image

from bakery.cli import cli, parse_size
from platforms.bare_metal.publish import open_failed
from talos_os import __version__
from talos_os.config.generate import generate

NO_AWS = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No region, credentials or profile leak in from the machine running the tests."""
    for key in NO_AWS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254 for credentials
    yield


@pytest.fixture(scope="module", autouse=True)
def imported() -> None:
    """Import what the aws command imports when it runs, once, so the first test is not charged for it."""
    import platforms.aws.publish  # noqa: F401


def refused(tmp_path: Path, *args: str, code: int = 1) -> Result:
    """Run talos-bake; it must fail in one line, without baking or writing anything (how fast is make
    bench's business, not a test's: a loaded machine makes timed assertions flaky)."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    extra = ["--cache", str(cache)] if args[0] not in ("cidata",) else []
    if "--out" not in args and args[0] != "install":  # install has no --out next to --image
        extra += ["--out", str(out)]
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    assert not cache.exists() and not out.exists(), "work started before the refusal"
    return result


def last_line(result: Result) -> str:
    return result.output.strip().splitlines()[-1]


@pytest.fixture
def junk(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")  # the 6-byte text file
    return path


# --- aws ---------------------------------------------------------------------------------------------


def test_aws_without_a_region(tmp_path: Path) -> None:
    r = refused(tmp_path, "aws", "--ami", "--name", "talos-x")
    assert last_line(r) == (
        "Error: no AWS region given: pass --region or set AWS_REGION (or a region in your AWS profile)"
    )


def test_aws_unknown_regions(tmp_path: Path) -> None:
    r = refused(tmp_path, "aws", "--ami", "--name", "talos-x", "--region", "mars-1")
    assert "unknown AWS region 'mars-1'" in last_line(r)
    r = refused(
        tmp_path, "aws", "--ami", "--name", "talos-x", "--region", "eu-west-1", "--copy-to-regions", "pluto-2"
    )
    assert "unknown AWS region 'pluto-2'" in last_line(r)


def test_aws_without_credentials_before_baking(tmp_path: Path) -> None:
    r = refused(tmp_path, "aws", "--ami", "--name", "talos-x", "--region", "eu-west-1")
    assert "no AWS credentials found" in last_line(r)


def test_aws_import_without_bucket(tmp_path: Path) -> None:
    r = refused(tmp_path, "aws", "--ami", "--name", "talos-x", "--region", "eu-west-1", "--method", "import")
    assert "--method import needs --bucket" in last_line(r)


# --- --image must be a talos-os image of the command's platform ---------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["kvm"],
        ["xen"],
        ["aws", "--ami", "--dry-run", "--region", "eu-west-1", "--name", "talos-x"],
        ["iso"],
        ["install", "--disk", "DISK"],
    ],
    ids=["kvm", "xen", "aws", "iso", "install"],
)
def test_any_file_is_not_an_image(tmp_path: Path, junk: Path, command: list[str]) -> None:
    args = [a if a != "DISK" else str(tmp_path / "disk.raw") for a in command]
    r = refused(tmp_path, *args, "--image", str(junk))
    assert f"--image {junk} is not a talos-os disk image (it is only 6 bytes)" in last_line(r)
    assert not (tmp_path / "disk.raw").exists()


def test_a_gpt_without_our_partitions_is_not_an_image(tmp_path: Path) -> None:
    image = tmp_path / "other.raw"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    os.system(f"sgdisk -o -n 1:0:0 -c 1:data {image} >/dev/null")
    r = refused(tmp_path, "kvm", "--image", str(image))
    assert "its GPT has no EFI, BIOS, BOOT, ROOT-A, ROOT-B, EPHEMERAL partition" in last_line(r)
    broken = make_image(tmp_path / "noboot.raw", "kvm", grub=False)
    r = refused(tmp_path, "kvm", "--image", str(broken))
    assert "its BOOT filesystem has no /boot/grub/grub.cfg" in last_line(r)


@pytest.mark.parametrize(
    ("command", "platform"),
    [
        (["aws", "--ami", "--dry-run", "--region", "eu-west-1", "--name", "talos-x"], "aws"),
        (["xen"], "xen"),
        (["kvm"], "kvm"),
        (["install", "--disk", "DISK"], "bare-metal"),
    ],
    ids=["aws", "xen", "kvm", "install"],
)
def test_an_image_of_another_platform_is_refused(tmp_path: Path, command: list[str], platform: str) -> None:
    other = "kvm" if platform != "kvm" else "xen"
    image = make_image(tmp_path / f"talos-{other}.raw", other)
    args = [a if a != "DISK" else str(tmp_path / "disk.raw") for a in command]
    r = refused(tmp_path, *args, "--image", str(image))
    assert last_line(r) == (
        f"Error: {image} was baked for {other} (talos.platform={other}), so on {platform} its node would not "
        f"find its config: bake it with --platform {platform}, or pass --force-platform to publish it anyway"
    )


def test_force_platform_publishes_loudly(tmp_path: Path) -> None:
    image = make_image(tmp_path / "talos-kvm.raw", "kvm")
    args = ["aws", "--ami", "--dry-run", "--region", "eu-west-1", "--name", "talos-x", "--image", str(image)]
    r = CliRunner().invoke(cli, [*args, "--force-platform"])
    assert r.exit_code == 0, r.output
    assert "warning: talos-kvm.raw was baked for kvm: it boots with talos.platform=kvm" in r.stderr
    assert r.stdout.startswith("plan (dry run")


def test_a_live_iso_may_carry_another_platform(tmp_path: Path) -> None:
    """An ISO is packaging, not a platform: a kvm image's ISO is warned about, not refused."""
    from platforms.image_source import checked_image

    image = make_image(tmp_path / "talos-kvm.raw", "kvm")
    assert checked_image(image, "bare-metal", False, refuse=False).platform == "kvm"


def test_publishing_commands_have_no_platform_option(tmp_path: Path) -> None:
    for command in ("kvm", "xen", "aws"):
        assert "--platform" not in CliRunner().invoke(cli, [command, "--help"]).output.replace(
            "--force-platform", ""
        )
        r = refused(tmp_path, command, "--platform", "aws" if command != "aws" else "kvm", code=2)
        assert f"talos-bake {command} only bakes {command} images: drop --platform" in r.output
    assert "--platform" in CliRunner().invoke(cli, ["iso", "--help"]).output


# --- kvm ---------------------------------------------------------------------------------------------


def test_kvm_bad_network_before_baking_or_converting(tmp_path: Path) -> None:
    r = refused(tmp_path, "kvm", "--network", "foo")
    assert "network 'foo' is not understood" in last_line(r)
    image = make_image(tmp_path / "talos-kvm.raw", "kvm")
    refused(tmp_path, "kvm", "--network", "foo", "--image", str(image))


def test_kvm_unreachable_libvirt_before_converting(tmp_path: Path) -> None:
    image = make_image(tmp_path / "talos-kvm.raw", "kvm")
    uri = f"qemu:///system?socket={tmp_path}/no-such-socket"
    r = refused(tmp_path, "kvm", "--image", str(image), "--define", "--uri", uri)
    assert f"cannot connect to libvirt at {uri}" in last_line(r)
    assert "--virt-type auto" not in r.output, "nothing is stated about a domain that will not exist"


LIBVIRT_TEST = "test:///default"  # libvirt's built-in test driver: a real connection, no daemon


def test_kvm_libvirt_network_and_domain_before_converting(tmp_path: Path) -> None:
    image = make_image(tmp_path / "talos-kvm.raw", "kvm")
    kvm = ["kvm", "--image", str(image), "--define", "--uri", LIBVIRT_TEST]
    r = refused(tmp_path, *kvm, "--network", "network=foo")
    assert last_line(r) == (
        f"Error: --network network=foo: libvirt at {LIBVIRT_TEST} has no network 'foo': create it "
        "(`virsh net-define` + `virsh net-start`), or pass --network user"
    )
    r = refused(tmp_path, *kvm, "--network", "bridge=nobr0")
    assert "this machine has no bridge 'nobr0'" in last_line(r)
    r = refused(tmp_path, *kvm, "--name", "test")  # the test driver's own domain
    assert f"a domain named 'test' already exists on {LIBVIRT_TEST}: pass --force" in last_line(r)
    out = tmp_path / "defined"
    ok = CliRunner().invoke(cli, [*kvm, "--name", "t16", "--firmware", "bios", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert f"domain t16 defined on {LIBVIRT_TEST}" in ok.stderr and (out / "t16.xml").exists()


def test_kvm_serial_log_in_a_missing_directory(tmp_path: Path) -> None:
    r = refused(tmp_path, "kvm", "--serial-log", str(tmp_path / "nope" / "serial.log"))
    assert "its directory does not exist" in last_line(r)


def test_kvm_attaches_the_config_as_a_cidata_cd(tmp_path: Path) -> None:
    image = make_image(tmp_path / "talos-kvm.qcow2", "kvm", fmt="qcow2")
    config = tmp_path / "worker.yaml"
    config.write_text(generate("demo", "https://10.0.0.1:6443").worker)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli, ["kvm", "--image", str(image), "--config", str(config), "--out", str(out), "--name", "n1"]
    )
    assert r.exit_code == 0, r.output
    _disk, iso, xml, line = r.stdout.splitlines()
    assert Path(iso) == out / "n1-cidata.iso" and stat.S_IMODE(Path(iso).stat().st_mode) == 0o600
    cdrom = ET.parse(xml).getroot().find("devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("source").get("file") == iso  # type: ignore[union-attr]
    assert f"--disk path={iso},device=cdrom,bus=sata" in line
    assert "--virt-type auto: this machine has" in r.stderr and "so the domain type is" in r.stderr
    piped = CliRunner().invoke(
        cli,
        ["kvm", "--image", str(image), "--config", "-", "--out", str(out), "--name", "n2"],
        input=config.read_bytes(),
    )
    assert piped.exit_code == 0, piped.output
    assert (out / "n2-cidata.iso").read_bytes() == Path(iso).read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1\nmachine: {type: nope}\n")
    r = refused(tmp_path / "again", "kvm", "--image", str(image), "--config", str(bad))
    assert f"{bad} is not a valid machine config" in last_line(r)


# --- install -----------------------------------------------------------------------------------------


def test_install_refuses_a_character_device(tmp_path: Path) -> None:
    r = refused(tmp_path, "install", "--disk", "/dev/null")
    assert "/dev/null is neither a block device nor a regular file" in last_line(r)


def test_install_never_creates_a_file_under_dev(tmp_path: Path) -> None:
    r = refused(tmp_path, "install", "--disk", "/dev/sdzz")
    assert last_line(r) == (
        "Error: /dev/sdzz does not exist: name an existing disk (`lsblk` lists them); files are only created "
        "outside /dev"
    )
    assert not Path("/dev/sdzz").exists()


def test_install_says_when_it_cannot_open_the_disk(tmp_path: Path) -> None:
    target = Path("/sys/kernel/uevent_seqnum")  # a regular file nobody may open for writing
    try:
        os.close(os.open(target, os.O_RDWR))
        pytest.skip(f"{target} opens read-write here")
    except PermissionError:
        pass
    r = refused(tmp_path, "install", "--disk", str(target))
    assert last_line(r).startswith(f"Error: cannot open {target} for writing (need root?)")
    assert open_failed(Path("/dev/sdb"), PermissionError(13, "Permission denied")) == (
        "cannot open /dev/sdb for writing (need root?): Permission denied"
    )


def test_install_refuses_a_disk_with_data_before_baking(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(3 << 30)  # big enough for the default 2 GiB image
        f.write(b"\x01" * 4096)
    r = refused(tmp_path, "install", "--disk", str(disk))
    assert "it holds data in its first MiB; pass --force to overwrite it" in last_line(r)


# --- cidata ------------------------------------------------------------------------------------------


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(generate("demo", "https://10.0.0.1:6443").worker)
    return path


def test_cidata_out_is_a_directory(tmp_path: Path, worker: Path) -> None:
    file = tmp_path / "x"
    file.write_text("")
    r = refused(tmp_path, "cidata", "--user-data", str(worker), "--out", str(file), code=2)
    assert f"Invalid value for '--out': Directory '{file}' is a file" in last_line(r)
    r = refused(tmp_path, "cidata", "--user-data", str(worker), "--out", str(tmp_path / "seed.iso"))
    assert "names a directory, not the ISO" in last_line(r)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("instance-id: [unclosed\n", "is not valid YAML"),
        ("- a list\n", "must be a YAML mapping such as `instance-id: node-1`"),
        ("local-hostname: w1\n", "has no instance-id: add `instance-id: SOMETHING-UNIQUE`"),
        ("instance-id: i-1\nlocal-hostname: bad_name\n", "hostname 'bad_name' is not valid"),
    ],
)
def test_cidata_meta_data_is_a_nocloud_mapping(tmp_path: Path, worker: Path, meta: str, message: str) -> None:
    path = tmp_path / "meta-data"
    path.write_text(meta)
    r = refused(tmp_path, "cidata", "--user-data", str(worker), "--meta-data", str(path))
    assert message in last_line(r)


def test_cidata_user_data_from_stdin(tmp_path: Path, worker: Path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["cidata", "--user-data", "-", "--out", str(out)], input=worker.read_bytes())
    assert r.exit_code == 0, r.output
    assert (out / "cidata.iso").stat().st_size > 0
    r = CliRunner().invoke(
        cli, ["cidata", "--user-data", "-", "--out", str(tmp_path / "x")], input=b"nope: 1\n"
    )
    assert r.exit_code == 1 and "stdin is not a valid machine config" in r.output


@pytest.mark.parametrize("hostname", ["bad_name", "-dash", "a" * 64, "x..y"])
def test_cidata_hostnames_are_checked(tmp_path: Path, worker: Path, hostname: str) -> None:
    r = refused(tmp_path, "cidata", "--user-data", str(worker), "--hostname", hostname)
    assert f"hostname {hostname!r} is not valid" in last_line(r)


# --- options and help --------------------------------------------------------------------------------


def test_sizes_plain_numbers_are_mib() -> None:
    assert parse_size("2048") == 2 << 30
    assert parse_size("2G") == parse_size("2GiB") == 2 << 30 and parse_size("1536M") == 1536 << 20
    with pytest.raises(click.BadParameter, match="2048 \\(MiB\\)"):
        parse_size("2 gigs")


def test_config_url_and_kernel_args_are_checked_when_parsed(tmp_path: Path) -> None:
    r = refused(tmp_path, "raw", "--config-url", "10.0.0.1/worker.yaml", code=2)
    assert "'10.0.0.1/worker.yaml' is not an http:// or https:// URL the node can fetch" in r.output
    r = refused(tmp_path, "xen", "--config-url", "ftp://h/c.yaml", code=2)
    assert "is not an http:// or https:// URL" in r.output
    r = refused(
        tmp_path,
        "install",
        "--disk",
        str(tmp_path / "d.raw"),
        "--extra-kernel-args",
        "talos.platform=aws",
        code=2,
    )
    assert "talos.platform=aws is set by the bake: use --platform instead" in r.output


def test_disk_size_is_checked_when_parsed(tmp_path: Path) -> None:
    r = refused(tmp_path, "raw", "--disk-size", "100", code=2)
    assert "Invalid value for '--disk-size': 100 is too small for the partitions: use" in r.output
    r = refused(tmp_path, "kvm", "--disk-size", "2 gigs", code=2)
    assert "'2 gigs' is not a size" in r.output


def test_talos_bake_starts_without_boto3_or_pydantic() -> None:
    """Refusals must be quick: the heavy imports wait until a command needs them."""
    from platforms.aws import cli as aws_cli
    from platforms.aws import publish

    assert aws_cli.METHODS == publish.METHODS
    probe = "import sys, bakery.cli; print(sorted({'boto3', 'pydantic'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_and_completion() -> None:
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and r.output == f"talos-bake, version {__version__}\n"
    r = CliRunner().invoke(cli, ["completion", "bash"])
    assert r.exit_code == 0 and "_TALOS_BAKE_COMPLETE" in r.output


def test_every_command_has_an_example_and_every_option_a_description() -> None:
    for name, command in sorted(cli.commands.items()):
        if isinstance(command, click.Group):
            continue  # groups owned elsewhere (e.g. cache) document their subcommands
        shown = CliRunner().invoke(cli, [name, "--help"])
        assert shown.exit_code == 0 and "Example" in shown.output, f"talos-bake {name} --help has no example"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"talos-bake {name}: {param.opts} has no description"
