"""The init's host-testable pieces: config acquisition, applying a config, modules, node state,
the platforms' guest halves and the phase runner. Files live in tmp_path; servers on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from talos_os.config import loads
from talos_os.config.generate import generate
from talos_os.init import modules
from talos_os.init.acquire import AcquirePolicy, acquire_config
from talos_os.init.apply import config_sysctls, save_config, write_files
from talos_os.init.main import Boot, run_phases
from talos_os.init.nodestate import load_or_create
from talos_os.lib.cmdline import parse
from talos_os.lib.fetch import ConfigRef, FetchError
from talos_os.plugins import discover
from talos_os.plugins.guest import GuestContext
from tools.nodevm import imds_server

GOOD = generate("demo", "https://10.5.0.2:6443").controlplane


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        self.lines.extend(message.splitlines())


def test_acquire_waits_through_absent_failing_and_invalid_sources() -> None:
    answers: list[ConfigRef | Exception | None] = [
        None,
        OSError("xenbus: no such device"),
        ConfigRef(source="test url", url="http://config/bad"),
        ConfigRef(source="test url", url="http://config/good"),
    ]
    bodies = {"http://config/bad": b"version: v1\nmachine: {}\n", "http://config/good": GOOD.encode()}
    sleeps: list[float] = []
    log = Lines()

    def find() -> ConfigRef | None:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    got = acquire_config(find, bodies.__getitem__, log, policy=AcquirePolicy(jitter=0.0), sleep=sleeps.append)
    assert got.attempts == 4 and got.source == "test url" and got.config.machine.type == "controlplane"
    text = "\n".join(log.lines)
    assert "no machine config offered" in text
    assert "config source failed: xenbus: no such device" in text
    assert "the machine config from test url is invalid:" in text
    assert "machine.type" in text  # the config model's own messages, one per line
    assert sleeps == [1.0, 2.0, 5.0]  # backoff for failures; a steady poll for an invalid config


def test_acquire_reports_fetch_errors_and_stops_only_in_tests() -> None:
    def fetch(url: str) -> bytes:
        raise FetchError(f"cannot reach {url}")

    log = Lines()
    with pytest.raises(TimeoutError, match="cannot reach http://x/c"):
        acquire_config(
            lambda: ConfigRef(source="s", url="http://x/c"), fetch, log, sleep=lambda _d: None, max_attempts=3
        )
    assert sum("cannot reach" in line for line in log.lines) == 1  # the same problem is told once


def test_config_is_saved_private_and_atomic(tmp_path: Path) -> None:
    path = save_config(b"version: v1\n", tmp_path / "run/talos/config.yaml")
    assert path.read_bytes() == b"version: v1\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


def test_config_sysctls_cannot_weaken_kspp_and_files_land_under_var(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  network: {}\n",
        "  network: {}\n  sysctls:\n    kernel.kptr_restrict: '0'\n    net.ipv4.ip_forward: '1'\n"
        "  files:\n  - path: /var/lib/demo/motd\n    content: hello\n    permissions: 0o600\n"
        "  - path: /var/lib/demo/motd\n    content: ' again'\n    op: append\n",
    )
    cfg = loads(text)
    allowed, refused = config_sysctls(cfg)
    assert allowed == {"net.ipv4.ip_forward": "1"} and refused == ["kernel.kptr_restrict"]
    assert write_files(cfg, tmp_path) == ["/var/lib/demo/motd", "/var/lib/demo/motd"]
    target = tmp_path / "var/lib/demo/motd"
    assert (
        target.read_text() == "hello again" and target.stat().st_mode & 0o777 == 0o644
    )  # the last entry's mode


def test_node_state_survives_and_counts_boots(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    second = load_or_create(tmp_path)
    assert first.new and not second.new
    assert first.machine_id == second.machine_id and len(first.machine_id) == 32
    assert (first.boots, second.boots) == (1, 2)


def test_modules_load_in_dependency_order_and_failures_are_reported(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/overlay.ko:\n"
        "kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/llc/stp.ko\n"
        "kernel/net/bridge/bridge.ko: kernel/net/llc/stp.ko\n"
        "kernel/net/llc/stp.ko:\n"
        "kernel/net/broken.ko:\n"
    )
    calls: list[str] = []

    def finit(path: str) -> bool:
        calls.append(Path(path).name)
        if path.endswith("broken.ko"):
            raise OSError(8, "Exec format error")
        return not path.endswith("overlay.ko")  # overlay: EEXIST, already loaded

    names_file = tmp_path / "names"
    names_file.write_text("# kubernetes\noverlay\nbr_netfilter\nbroken\nmissing\n")
    report = modules.load(modules.read_names(names_file), tmp_path, finit, already={"stp"})
    assert calls == ["overlay.ko", "bridge.ko", "br_netfilter.ko", "broken.ko"]
    assert report.loaded == ["bridge", "br_netfilter"] and report.present == ["overlay"]
    assert [n for n, _ in report.failed] == ["broken", "missing"]


def test_every_platform_plugin_has_a_guest_half() -> None:
    plugins = discover()
    assert set(plugins) == {"aws", "kvm", "xen", "bare-metal"}
    for plugin in plugins.values():
        assert callable(plugin.guest.find_config) and callable(plugin.guest.hostname)


def test_kvm_guest_prefers_cmdline_then_fw_cfg(tmp_path: Path) -> None:
    guest = discover()["kvm"].guest
    ctx = GuestContext(cmdline=parse("talos.config=http://10.0.2.100/c.yaml"), root=tmp_path)
    assert guest.find_config(ctx) == ConfigRef(
        source="kernel command line talos.config=", url="http://10.0.2.100/c.yaml"
    )
    raw = tmp_path / "sys/firmware/qemu_fw_cfg/by_name/opt/talos/config/raw"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(GOOD.encode())
    ref = guest.find_config(GuestContext(cmdline=parse("quiet"), root=tmp_path))
    assert ref is not None and ref.data == GOOD.encode() and "fw_cfg" in ref.source
    assert guest.find_config(GuestContext(cmdline=parse("quiet"), root=tmp_path / "empty")) is None


def test_bare_metal_guest_fills_url_variables(tmp_path: Path) -> None:
    guest = discover()["bare-metal"].guest
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text("4c4c4544-0000-1111-2222-333344445555\n")
    ctx = GuestContext(cmdline=parse("talos.config=http://cfg/${uuid}.yaml"), root=tmp_path)
    ref = guest.find_config(ctx)
    assert ref is not None and ref.url == "http://cfg/4c4c4544-0000-1111-2222-333344445555.yaml"


def test_aws_guest_reads_user_data_and_hostname_over_imdsv2() -> None:
    guest = type(discover()["aws"].guest)()  # a fresh client: the plugin's instance caches its token
    with imds_server(GOOD.encode()) as imds:
        ctx = GuestContext(cmdline=parse(f"talos.aws.imds=http://127.0.0.1:{imds.port}"))
        ref = guest.find_config(ctx)
        assert ref is not None and ref.data == GOOD.encode() and ref.source == "AWS IMDSv2 user-data"
        assert guest.hostname(ctx) == "ip-10-0-2-15"
        assert ctx.facts["instance-id"] == imds.instance_id
        assert imds.violations == [] and imds.log[0] == "PUT /latest/api/token"
    with imds_server(None) as imds:
        ctx = GuestContext(cmdline=parse(f"talos.aws.imds=http://127.0.0.1:{imds.port}"))
        assert type(guest)().find_config(ctx) is None  # 404: launched without user data


def test_xen_guest_falls_back_to_the_command_line(tmp_path: Path) -> None:
    guest = type(discover()["xen"].guest)((str(tmp_path / "no-xenbus"),))
    log = Lines()
    ctx = GuestContext(cmdline=parse("talos.config=http://cfg/x.yaml"), log=log)
    assert guest.find_config(ctx) == ConfigRef(
        source="kernel command line talos.config=", url="http://cfg/x.yaml"
    )
    assert any("xenstore unavailable" in line for line in log.lines)
    assert guest.hostname(ctx) is None


def test_phases_run_in_order_and_are_timed() -> None:
    order: list[str] = []
    boot = Boot()
    boot.console.log = Lines()  # type: ignore[method-assign]
    run_phases(boot, [("one", lambda b: order.append("one")), ("two", lambda b: order.append("two"))])
    assert order == ["one", "two"] and list(boot.durations) == ["one", "two"]
    assert all(line.startswith("phase ") and line.endswith(" ms") for line in boot.console.log.lines)


def test_an_unexpected_exception_is_logged_then_the_node_reboots(monkeypatch: pytest.MonkeyPatch) -> None:
    from talos_os.init import main as init_main

    log = Lines()
    events: list[str] = []

    class Stop(BaseException):
        pass

    def boom(boot: Boot, phases: object) -> None:
        raise ValueError("disk on fire")

    def sleep(seconds: float) -> None:
        events.append(f"sleep {seconds:.0f}")
        if len(events) > 2:
            raise Stop  # the endless wait after the reboot syscall

    monkeypatch.setattr(init_main, "run_phases", boom)
    monkeypatch.setattr(init_main.Console, "log", lambda self, message: log(message))
    monkeypatch.setattr(init_main.time, "sleep", sleep)
    monkeypatch.setattr(init_main.syscalls, "reboot", lambda cmd: events.append(f"reboot {cmd:#x}"))
    monkeypatch.setattr(init_main.os, "sync", lambda: None)
    with pytest.raises(Stop):
        init_main.main()
    assert "FATAL: disk on fire" in log.lines and "rebooting in 60 s" in log.lines
    assert any("ValueError: disk on fire" in line for line in log.lines)  # the traceback, for a bug report
    assert events[:2] == ["sleep 60", f"reboot {init_main.syscalls.LINUX_REBOOT_CMD_RESTART:#x}"]


def test_a_config_wrong_only_in_kubernetes_brings_the_node_up_without_it() -> None:
    """Bad pod/service ranges or another Kubernetes version cost Kubernetes, not the node: osd still
    comes up (with the machine settings) and the errors are logged with their paths."""
    bad = GOOD.replace("version: v1.36.3", "version: v1.30.2").replace("10.96.0.0/12", "10.0.0.0/8")
    log = Lines()
    got = acquire_config(
        lambda: ConfigRef(source="test url", url="http://config/bad"), {"http://config/bad": bad.encode()}.__getitem__,
        log, policy=AcquirePolicy(jitter=0.0), sleep=lambda _s: None, max_attempts=1,
    )  # fmt: skip
    text = "\n".join(log.lines)
    assert "cluster.kubernetes.version" in text and "cluster.network.serviceSubnets[0]" in text
    assert "the node comes up without Kubernetes" in text
    assert "cluster.kubernetes.version" in got.kubernetes_problem
    assert got.config.machine.type == "controlplane" and got.config.cluster.kubernetes.version == "v1.36.3"
    assert loads(got.data).machine.ca == got.config.machine.ca  # what osd reads is the usable config


def test_a_config_wrong_elsewhere_still_waits() -> None:
    bad = GOOD.replace("version: v1.36.3", "version: v1.30.2").replace("type: controlplane", "type: pilot")
    with pytest.raises(TimeoutError, match=r"machine\.type"):
        acquire_config(
            lambda: ConfigRef(source="u", url="http://c/b"), {"http://c/b": bad.encode()}.__getitem__, Lines(),
            policy=AcquirePolicy(jitter=0.0), sleep=lambda _s: None, max_attempts=1,
        )  # fmt: skip
