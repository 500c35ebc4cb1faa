"""Stage 2: the init (PID 1) inside the read-only squashfs root.

The boot sequence is the ``EARLY`` then the ``CONFIGURE`` list below, run in order; each phase is logged on the
console and the kernel log with a ``[talos]`` prefix and its duration. The banner
``talos-os init <version> (platform=<name>)`` follows the platform phase, so an image without a
config still shows it booted; then the node waits for its config and comes up.

PID 1 never exits: an unexpected exception is logged and the node reboots after a delay. Reboot,
shutdown and reset requests (Ctrl-Alt-Del, or osd through the control socket) end in
:func:`shutdown_node`, which runs the ``REBOOT``, ``SHUTDOWN`` or ``RESET`` phase list, each phase
logged with its duration: services stop in reverse order, file systems sync and unmount, then the
reboot syscall.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talos_os import __version__
from talos_os.config import MachineConfig, MachineNetwork, MachineType
from talos_os.init import disks, modules, network, reconfigure, syscalls
from talos_os.init.acquire import Acquired, acquire_config
from talos_os.init.apply import config_sysctls, save_config, write_files
from talos_os.init.console import Console
from talos_os.init.control import ControlServer, network_handlers, supervisor_handlers
from talos_os.init.detect import NoPlatformError, detect_with_reason
from talos_os.init.early import Early
from talos_os.init.hardening import KSPP_SYSCTLS, missing_kspp, write_sysctls
from talos_os.init.maintenance import Maintenance
from talos_os.init.maintenance import persist as persist_config
from talos_os.init.nodestate import STATE_DIR, load_or_create
from talos_os.init.services import OSD_PORT, Identity, KubernetesPlan, node_services
from talos_os.init.stopphases import StopPhase, run_stop_phases
from talos_os.init.supervisor import ChildReaper, Supervisor
from talos_os.init.supervisor import run as supervisor_run
from talos_os.init.supervisor.parking import ParkingRunner
from talos_os.install import live_label
from talos_os.kubernetes import kubeadm as kubeadm_config
from talos_os.kubernetes import node as kubernetes_node
from talos_os.lib import cgroups, memory
from talos_os.lib.cmdline import Cmdline, read
from talos_os.lib.control import DEFAULT_SOCKET
from talos_os.lib.fetch import Progress, fetch_url
from talos_os.plugins import UnknownPlatformError, discover, get
from talos_os.plugins.guest import Guest, GuestContext
from talos_os.plugins.nocloud import kernel_mount
from talos_os.upgrade.agent import DEFAULT_DEADLINE, Agent, NodeOps, node_ready

WRITABLE_ETC = ("cni", "kubernetes")  # /etc/<name> is bind-mounted from /var/lib/talos/etc/<name>
PANIC_DELAY = 60.0


class BootError(RuntimeError):
    """A condition the node cannot boot past; the message says what and how to fix it."""


@dataclass
class Boot:
    """State the phases share: the kernel command line and what each phase found."""

    cmdline: Cmdline = field(default_factory=Cmdline)
    console: Console = field(default_factory=Console)
    reaper: ChildReaper = field(default_factory=ChildReaper)
    platform: str = "unknown"
    guest: Guest | None = None
    guest_ctx: GuestContext | None = None
    acquired: Acquired | None = None
    network: network.NetworkManager | None = None
    hostname: str = ""
    address: str = ""
    kubernetes: KubernetesPlan | None = None
    supervisor: Supervisor | None = None
    control: ControlServer | None = None
    requests: queue.Queue[str] = field(default_factory=queue.Queue)
    durations: dict[str, float] = field(default_factory=dict)
    stop_durations: dict[str, float] = field(default_factory=dict)  # the shutdown/reboot/reset phases
    upgrade: Agent | None = None
    parking: ParkingRunner | None = None  # osd, launched before the init's imports (talos_os.init.early)

    def log(self, message: str) -> None:
        self.console.log(message)


# --- phases -----------------------------------------------------------------------------------


def phase_early_mounts(boot: Boot) -> None:
    """tmpfs on /run and /tmp, cgroup2; /dev, /proc and /sys came from stage 1 (so did urandom)."""
    mounts = (
        ("tmpfs", "/run", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
         "nsdelegate"),
    )  # fmt: skip
    for source, target, fstype, flags, data in mounts:
        if not os.path.ismount(target):
            syscalls.mount(source, target, fstype, flags, data)
    boot.cmdline = read()
    # Keep info-level kernel-log lines off the console: our own lines go there directly.
    Path("/proc/sys/kernel/printk").write_text("4 4 1 7")
    boot.reaper.start()


def phase_hardening(boot: Boot) -> None:
    """Refuse to run without the KSPP kernel parameters; apply the KSPP sysctls."""
    missing = missing_kspp(boot.cmdline)
    if missing:
        raise BootError(
            "the kernel command line lacks the KSPP parameters "
            f"{' '.join(missing)}: add them to the boot loader entry (talos-bake writes them)"
        )
    absent = write_sysctls(KSPP_SYSCTLS)
    if absent:
        boot.log(f"hardening: this kernel has no {', '.join(absent)}")
    syscalls.reboot(syscalls.LINUX_REBOOT_CMD_CAD_OFF)  # Ctrl-Alt-Del becomes SIGINT for us


def phase_modules(boot: Boot) -> None:
    """Kernel modules for containers and Kubernetes networking (overlay, br_netfilter, ...); the boot modules
    stage 1 loaded from the root are checked again (present, or retried and named if they failed)."""
    names = [*modules.late_names(), *modules.read_names()]
    if not names:
        return
    report = modules.load(names, modules.module_dir(), syscalls.finit_module, modules.loaded_modules())
    boot.log(f"modules: {len(report.loaded)} loaded, {len(report.present)} already present")
    for name, why in report.failed:
        boot.log(f"modules: {name} failed: {why}")


def phase_root(boot: Boot) -> None:
    """The root is the read-only squashfs; the /etc files that change live in /run."""
    probe = Path("/.talos-write-probe")
    try:
        probe.write_text("")
    except OSError as exc:
        boot.log(f"root: read-only squashfs (a write to / fails: {os.strerror(exc.errno or 0)})")
    else:
        probe.unlink()
        raise BootError("the root file system is writable: boot the squashfs root that talos-bake writes")
    # /etc/hostname, hosts and resolv.conf (links into /run) exist until the apply phase knows better.
    network.apply_hostname("talos", network.FILES_DIR)
    (network.FILES_DIR / "resolv.conf").write_text(network.render_resolv_conf([]))


def phase_platform(boot: Boot) -> None:
    """Which platform this node runs on: ``talos.platform=`` (the bakery writes it), else detection."""
    plugins = discover()  # once: detection and the lookup share it
    try:
        found = detect_with_reason(Path("/"), boot.cmdline, plugins)
    except NoPlatformError as exc:
        raise BootError(str(exc)) from None
    try:
        plugin = get(found.name, plugins)
    except UnknownPlatformError as exc:
        raise BootError(f"{exc} (chosen because {found.reason})") from None
    boot.platform = plugin.name
    boot.guest = plugin.guest
    boot.guest_ctx = GuestContext(cmdline=boot.cmdline, log=boot.log, mount=kernel_mount)
    boot.log(f"platform: {plugin.name} ({found.reason})")


def phase_disks(boot: Boot) -> None:
    """EPHEMERAL: found by GPT name, formatted when blank, grown, checked, mounted at /var."""
    result = disks.prepare_ephemeral(disk_ops(boot), boot.log, prefer_disk=disks.root_disk())
    if not result.mounted:
        syscalls.mount("tmpfs", "/var", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755")
        disks.make_layout(Path("/var"))
        boot.log(f"disks: /var is a tmpfs ({result.problem}): nothing under /var survives a reboot")
    for name in WRITABLE_ETC:  # CNI plugins and the kubelet write there; the root stays read-only
        source = STATE_DIR / "etc" / name
        source.mkdir(parents=True, exist_ok=True)
        if Path("/etc", name).is_dir() and not os.path.ismount(f"/etc/{name}"):
            syscalls.mount(str(source), f"/etc/{name}", None, syscalls.MS_BIND)
    state = load_or_create()
    how = "new" if state.new else "kept"
    boot.log(f"disks: /var mounted; machine-id {state.machine_id} ({how}), boot {state.boots} on this disk")


def disk_ops(boot: Boot) -> disks.SystemDiskOps:
    """Disk side effects for the node: tools run through the reaper (PID 1 must not use subprocess.run)."""
    return disks.SystemDiskOps(functools.partial(supervisor_run, boot.reaper))


def phase_slots(boot: Boot) -> None:
    """A/B slots (talos_os.upgrade): which one booted, what a failed upgrade left; a slot on trial is
    marked good once the node is ready, or the node reboots into the old slot at the deadline."""
    boot.upgrade = Agent(
        NodeOps(),
        boot.cmdline.get("talos.root"),
        __version__,
        log=boot.log,
        request_reboot=lambda: boot.requests.put("reboot"),
        kube_node=lambda: boot.kubernetes.hostname if boot.kubernetes else None,
        deadline=float(boot.cmdline.get("talos.upgrade.deadline") or DEFAULT_DEADLINE),
    )
    boot.upgrade.on_boot(boot.cmdline.get("talos.test"))
    boot.upgrade.watch(
        lambda: (
            "services are not started yet"
            if boot.supervisor is None
            else node_ready(OSD_PORT, boot.kubernetes is not None)
        )
    )


def phase_network(boot: Boot) -> None:
    """Links up and DHCP on every wired link: the config usually comes over the network."""
    boot.network = network.NetworkManager(boot.log, lease_dir=STATE_DIR / "dhcp")
    state = boot.network.configure(None)
    boot.log(f"network: addresses {', '.join(state.addresses) or 'none yet'}")


def phase_config(boot: Boot) -> None:
    """Fetch and validate the machine config; wait (with retries) until a valid one arrives."""
    guest, ctx = boot.guest, boot.guest_ctx
    assert guest is not None and ctx is not None

    def progress(p: Progress) -> None:
        if p.phase == "retrying" and p.delay is not None:
            boot.log(f"config: {p.url}: {p.error}; retry {p.attempt} in {p.delay:.1f} s")

    def fetch(url: str) -> bytes:
        boot.log(f"config: fetching {url}")
        return fetch_url(url, progress=progress, deadline=60.0)

    label = live_label(boot.cmdline)  # booted from the live ISO: it can install itself
    iso, image_map = None, None
    if label:  # the installer's modules load only then (they cost every other boot its start)
        from talos_os.install import image as install_image
        from talos_os.install import node as install_node  # also installs below, when iso is set

        iso = install_node.mount_iso(label)
        image_map = iso / install_image.MAP_PATH
    waiting = Maintenance(boot.log, boot.reaper, lambda: node_addresses(boot), image_map=image_map)
    boot.acquired = acquire_config(
        waiting.find(lambda: guest.find_config(ctx)), fetch, boot.log, sleep=waiting.sleep
    )
    waiting.stop()
    save_config(boot.acquired.data)
    if waiting.pushed:
        install = boot.acquired.config.machine.install
        if iso is not None and install is not None and install.disk:
            done = install_node.install(
                install.disk, install.wipe, boot.acquired.data, iso, boot.log, disk_ops(boot)
            )
            boot.log(
                f"install: {done.disk} installed in {done.seconds:.0f} s; rebooting into the installed system"
            )
            shutdown_node(boot, "reboot")
        persist_config(boot.acquired.data)


def node_addresses(boot: Boot) -> list[str]:
    """The node's addresses (without prefix length), for the maintenance console lines."""
    if boot.network is None:
        return []
    return [a.split("/")[0] for a in boot.network.state().addresses]


def phase_apply(boot: Boot) -> None:
    """sysctls, network settings, hostname and files from the config."""
    assert boot.acquired is not None and boot.guest is not None and boot.guest_ctx is not None
    assert boot.network is not None
    cfg = boot.acquired.config
    sysctls, refused = config_sysctls(cfg)
    for key in refused:
        boot.log(f"apply: sysctl {key} would weaken KSPP hardening: kept at {KSPP_SYSCTLS[key]}")
    absent = write_sysctls(sysctls)
    if absent:
        boot.log(f"apply: this kernel has no sysctl {', '.join(absent)}")
    state = boot.network.configure(cfg.machine.network)
    configured = cfg.machine.network.hostname if cfg.machine.network else None
    name, source = network.choose_hostname(
        configured, platform_hostname(boot), state.dhcp_hostname, state.mac
    )
    boot.hostname = network.apply_hostname(
        name, network.FILES_DIR, syscalls.sethostname, address=state.primary_address
    )
    boot.address = state.primary_address or ""
    boot.log(f"apply: hostname {boot.hostname} (from {source}); hostname now {socket.gethostname()}")
    for path in write_files(cfg):
        boot.log(f"apply: wrote {path}")


def platform_hostname(boot: Boot) -> str | None:
    """The platform's metadata hostname; a metadata failure only costs us this choice."""
    assert boot.guest is not None and boot.guest_ctx is not None
    try:
        return boot.guest.hostname(boot.guest_ctx)
    except Exception as exc:
        boot.log(f"apply: no hostname from platform metadata: {exc}")
        return None


def make_shared(path: str, bind_first: bool) -> None:
    """Shared mount propagation (bidirectional volumes need it); a directory is bound onto itself first."""
    if bind_first and not os.path.ismount(path):
        syscalls.mount(path, path, None, syscalls.MS_BIND)
    syscalls.mount("none", path, None, syscalls.MS_REC | syscalls.MS_SHARED)


def phase_kubernetes(boot: Boot) -> None:
    """Kernel knobs, shared mounts, state on /var and containerd's CRI config; then the plan of the
    Kubernetes services (the init node also bootstraps the control plane)."""
    assert boot.acquired is not None
    cfg = boot.acquired.config
    if boot.acquired.kubernetes_problem:
        boot.log("kubernetes: not started: the config's Kubernetes settings are invalid (see above)")
        return
    if not boot.address:
        boot.log("kubernetes: the node has no address yet: Kubernetes services are not started")
        return
    host_resolv = (network.FILES_DIR / "resolv.conf").read_text()
    effects = kubernetes_node.Effects(write_sysctls, make_shared)
    absent = kubernetes_node.prepare(cfg, effects, boot.address, host_resolv)
    if absent:
        boot.log(f"kubernetes: this kernel has no sysctl {', '.join(absent)}")
    facts = kubeadm_config.NodeFacts(boot.hostname, boot.address)
    init = cfg.machine.type == MachineType.INIT
    boot.kubernetes = KubernetesPlan(
        boot.hostname,
        boot.address,
        init,
        tuple(kubeadm_config.kubelet_flags(cfg, facts)),
        join=not init,
        control_plane=cfg.machine.type.is_control_plane,
        pod_subnets=tuple(str(s) for s in cfg.cluster.network.pod_subnets),
        control_plane_endpoint="" if init else kubeadm_config.api_server_endpoint(cfg),
    )
    role = {
        MachineType.INIT: "bootstraps the control plane",
        MachineType.CONTROLPLANE: "joins the control plane",
        MachineType.WORKER: "joins the cluster as a worker",
    }[cfg.machine.type]
    boot.log(f"kubernetes: {cfg.cluster.kubernetes.version} on {boot.address}; this node {role}")


def phase_services(boot: Boot) -> None:
    """The supervisor, its control socket (for osd) and the node's services."""
    sup = Supervisor(reaper=boot.reaper, log_dir=Path("/var/log"), cgroup_root=cgroups.DEFAULT_ROOT)
    if boot.parking is not None:  # osd's first start is the process parked at the start of stage 2
        sup.runner = boot.parking.bind(sup.runner, sup.cgroups, note=boot.log)
    identity = None
    if boot.acquired is not None:
        control_plane = boot.acquired.config.machine.type.is_control_plane
        identity = Identity(control_plane, boot.hostname, boot.address)
    for spec in node_services(kubernetes=boot.kubernetes, identity=identity):
        sup.add(spec)
    handlers = supervisor_handlers(
        sup,
        reboot=lambda: boot.requests.put("reboot"),
        shutdown=lambda: boot.requests.put("shutdown"),
        reset=lambda: boot.requests.put("reset"),
    )
    handlers |= network_handlers()  # osd asks the init: it holds the node's only netlink stack
    if boot.upgrade is not None:
        handlers |= boot.upgrade.handlers()
    handlers |= reconfigure_handlers(boot)
    boot.control = ControlServer(DEFAULT_SOCKET, handlers)
    boot.control.start()
    boot.supervisor = sup
    sup.start()
    boot.log(f"services: {', '.join(sup.order())} starting")


def reconfigure_handlers(boot: Boot) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """``osctl apply-config`` on this running node (see talos_os.init.reconfigure)."""

    def replace(cfg: MachineConfig) -> None:
        assert boot.acquired is not None
        boot.acquired = dataclasses.replace(boot.acquired, config=cfg)

    def network_now(netcfg: MachineNetwork | None) -> network.NetworkState:
        assert boot.network is not None
        wait = min(network.dhcp_timeout(netcfg), reconfigure.LIVE_DHCP_WAIT)
        state = boot.network.configure(netcfg, timeout=wait)
        boot.address = state.primary_address or boot.address
        return state

    def reboot_soon() -> None:  # after the reply has gone back to osd
        threading.Timer(1.0, lambda: boot.requests.put("reboot")).start()

    effects = reconfigure.Effects(
        save=persist_config,
        publish=save_config,
        apply_live=lambda cfg: reconfigure.apply_live(cfg, boot.address or None, network_now),
        reboot=reboot_soon,
    )
    return reconfigure.control_handlers(
        lambda: boot.acquired.config if boot.acquired else None, replace, effects
    )


EARLY: list[tuple[str, Callable[[Boot], None]]] = [
    ("early mounts", phase_early_mounts),
    ("hardening", phase_hardening),
    ("modules", phase_modules),
    ("root", phase_root),
    ("platform", phase_platform),
]
CONFIGURE: list[tuple[str, Callable[[Boot], None]]] = [
    ("disks", phase_disks),
    ("slots", phase_slots),
    ("network", phase_network),
    ("config", phase_config),
    ("apply", phase_apply),
    ("kubernetes", phase_kubernetes),
    ("services", phase_services),
]


def run_phases(boot: Boot, phases: list[tuple[str, Callable[[Boot], None]]]) -> None:
    """Run each phase in order, logging its name and duration."""
    for name, phase in phases:
        start = time.monotonic()
        phase(boot)
        boot.durations[name] = time.monotonic() - start
        boot.log(f"phase {name}: done in {boot.durations[name] * 1000:.0f} ms")


# --- the node's life after boot ----------------------------------------------------------------


def wait_for_request(boot: Boot) -> str:
    """Block until Ctrl-Alt-Del (SIGINT) or the control socket asks for reboot, shutdown or reset."""
    signal.signal(signal.SIGINT, lambda *_: boot.requests.put("reboot"))
    signal.signal(signal.SIGTERM, lambda *_: boot.requests.put("shutdown"))
    while True:
        with contextlib.suppress(queue.Empty):
            return boot.requests.get(timeout=1.0)


# --- taking the node down: shutdown, reboot and reset are phase lists like boot ----------------


def stop_kubelet(boot: Boot, action: str) -> None:
    """The kubelet first, or it restarts what :func:`stop_pods` stops."""
    if boot.supervisor is not None and boot.kubernetes is not None:
        boot.supervisor.stop_service("kubelet", timeout=30.0)


def stop_pods(boot: Boot, action: str) -> None:
    """Every pod's containers, through the CRI (best effort: containerd may already be gone)."""
    if boot.supervisor is not None and boot.kubernetes is not None:
        kubernetes_node.stop_pods(lambda argv: supervisor_run(boot.reaper, argv, timeout=30.0), boot.log)


def stop_services(boot: Boot, action: str) -> None:
    """The supervised services, in reverse start order; a parked process never started is told to exit."""
    if boot.supervisor is not None:
        boot.supervisor.shutdown()
    if boot.parking is not None:
        boot.parking.close()


def stop_control(boot: Boot, action: str) -> None:
    """The control socket: nothing may ask for more once the services are gone."""
    if boot.control is not None:
        boot.control.stop()


def release_network(boot: Boot, action: str) -> None:
    """Links down and the DHCP lease handed back: the node will not come back as itself soon."""
    if boot.network is not None:
        boot.network.stop(release=True)


def keep_lease(boot: Boot, action: str) -> None:
    """Links down, the DHCP lease kept: a rebooting node asks for the same address again."""
    if boot.network is not None:
        boot.network.stop(release=False)


def sync(boot: Boot, action: str) -> None:
    """Dirty pages to disk before the file systems go."""
    os.sync()


def unmount(boot: Boot, action: str) -> None:
    """The /etc binds, then /var (detached when it is still busy); failures never stop the shutdown."""
    for name in WRITABLE_ETC:
        if os.path.ismount(f"/etc/{name}"):
            with contextlib.suppress(OSError):
                syscalls.umount(f"/etc/{name}")
    if os.path.ismount("/var"):
        try:
            syscalls.umount("/var")
        except OSError as exc:
            boot.log(f"{action}: unmount /var: {exc}; detaching it")
            with contextlib.suppress(OSError):
                syscalls.umount("/var", syscalls.MNT_DETACH)


def wipe_ephemeral(boot: Boot, action: str) -> None:
    """Reset: EPHEMERAL wiped, so the next boot formats it afresh."""
    disks.wipe_ephemeral(disk_ops(boot), boot.log, prefer_disk=disks.root_disk())


def restart(boot: Boot, action: str) -> None:
    """The reboot syscall (it does not return on a node)."""
    boot.log("rebooting")
    syscalls.reboot(syscalls.LINUX_REBOOT_CMD_RESTART)


def power_off(boot: Boot, action: str) -> None:
    """The power-off syscall (it does not return on a node)."""
    boot.log("powering off")
    syscalls.reboot(syscalls.LINUX_REBOOT_CMD_POWER_OFF)


_STOP: list[StopPhase[Boot]] = [
    StopPhase("stop kubelet", stop_kubelet),
    StopPhase("stop pods", stop_pods, best_effort=True),
    StopPhase("stop services", stop_services),
    StopPhase("stop control socket", stop_control),
]


def _down(
    network: StopPhase[Boot], end: StopPhase[Boot], *before_final: StopPhase[Boot]
) -> list[StopPhase[Boot]]:
    """Services, the network, sync, unmount, anything ``before_final``, a last sync, then ``end``."""
    return [*_STOP, network, StopPhase("sync", sync), StopPhase("unmount", unmount), *before_final,
            StopPhase("final sync", sync), end]  # fmt: skip


_RELEASE = StopPhase("release network", release_network, best_effort=True)
_REBOOT = StopPhase("reboot", restart)
SHUTDOWN = _down(_RELEASE, StopPhase("power off", power_off))
REBOOT = _down(StopPhase("stop network", keep_lease, best_effort=True), _REBOOT)
RESET = _down(_RELEASE, _REBOOT, StopPhase("wipe ephemeral", wipe_ephemeral))
STOP_PHASES: dict[str, list[StopPhase[Boot]]] = {"shutdown": SHUTDOWN, "reboot": REBOOT, "reset": RESET}


def shutdown_node(boot: Boot, action: str) -> None:
    """Stop services in reverse order, sync, unmount, then reboot or power off (reset wipes /var first):
    the ``action``'s phase list."""
    boot.log(f"{action}: stopping services")
    run_stop_phases(boot, action, STOP_PHASES[action], boot.log, boot.stop_durations)


def panic(boot: Boot, exc: BaseException) -> None:
    """Log the failure, wait, reboot; never return (PID 1 exiting would panic the kernel)."""
    for line in traceback.format_exception(exc):
        boot.log(line.rstrip("\n"))
    delay = float(boot.cmdline.get("talos.panic_delay") or PANIC_DELAY)
    boot.log(f"FATAL: {exc}")
    boot.log(f"rebooting in {delay:.0f} s")
    time.sleep(delay)
    try:
        os.sync()
        syscalls.reboot(syscalls.LINUX_REBOOT_CMD_RESTART)
    finally:
        while True:
            time.sleep(3600)


def main(early: Early | None = None) -> None:
    """Stage 2 entry point (``/sbin/init`` in the squashfs root), after :func:`talos_os.init.early.park`."""
    boot = (
        Boot() if early is None else Boot(console=early.console, reaper=early.reaper, parking=early.parking)
    )
    try:
        run_phases(boot, EARLY)
        boot.log(f"talos-os init {__version__} (platform={boot.platform})")
        if boot.cmdline.get("talos.test") == "poweroff":
            shutdown_node(boot, "shutdown")
        run_phases(boot, CONFIGURE)
        total = sum(boot.durations.values())
        boot.log(
            f"node ready: {boot.hostname} in {total:.1f} s of init ({time.monotonic():.1f} s since power-on); "
            f"{memory.describe('init')}"
        )
        shutdown_node(boot, wait_for_request(boot))
    except BaseException as exc:  # PID 1 never exits: explain, wait, restart
        panic(boot, exc)


if __name__ == "__main__":
    main()
