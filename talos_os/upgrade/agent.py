"""The init's side of upgrades: reconcile the slots at boot, keep or give up a slot on trial, and
carry out upgrade and rollback requests from osd (control socket ops ``upgrade_*``).

Why the init: writing a raw ROOT partition and mounting BOOT read-write is power over the whole
node, and osd holds none of its own (it asks the init for reboots, service control and logs too).
osd fetches or receives the bundle into :data:`STAGING` on /var and hands the init its path; the
init verifies it again, writes, arms the slot, drains Kubernetes and reboots through its own
shutdown path.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talos_os.init import syscalls
from talos_os.lib.control import ControlError
from talos_os.upgrade import STAGING, bundle, grubenv, slots, writer

BOOT_MOUNT = Path("/run/talos/boot")
DRAIN_TIMEOUT = 300.0  # seconds a drain may take, the API's slow answers included
DEFAULT_DEADLINE = 900.0  # seconds a slot on trial has to become ready (talos.upgrade.deadline=)
KUBELET_HEALTHZ = "http://127.0.0.1:10248/healthz"
KUBELET_CONFIG = Path(
    "/var/lib/kubelet/config.yaml"
)  # written by kubeadm when the node joined or bootstrapped
REBOOT_GRACE = 2.0  # seconds between "done" and the reboot: osd reads the last status first
FAIL_INIT = "fail-init"  # talos.test=fail-init: an init that fails on purpose (upgrade tests)
FORCE_AFTER = 120.0  # seconds after a reboot request the trial forces one (the init may be stuck in a phase)


def force_reboot() -> None:
    """The last resort of a trial past its deadline: the init never got to its orderly reboot."""
    os.sync()
    syscalls.reboot(syscalls.LINUX_REBOOT_CMD_RESTART)


class NodeOps:
    """The node's disks: partitions of the disk the root was mounted from, BOOT mounted on demand."""

    def __init__(self, sys_block: Path = Path("/sys/class/block"), mountpoint: Path = BOOT_MOUNT) -> None:
        self.sys_block = sys_block
        self.mountpoint = mountpoint
        self._lock = threading.Lock()

    def _disk(self) -> str:
        st = os.stat("/")
        part = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}").resolve()
        if not (part / "partition").exists():
            raise slots.SlotError(
                "the root file system is not on a disk partition: this node has no A/B slots"
            )
        return part.parent.name

    def _find(self, label: str) -> Path:
        disk = self.sys_block / self._disk()
        for entry in sorted(disk.iterdir()):
            uevent = entry / "uevent"
            if not (entry / "partition").exists() or not uevent.exists():
                continue
            fields = dict(line.partition("=")[::2] for line in uevent.read_text().splitlines())
            if fields.get("PARTNAME") == label and fields.get("DEVNAME"):
                return Path("/dev") / fields["DEVNAME"]
        raise slots.SlotError(
            f"the boot disk has no partition named {label}: it was not installed by talos-bake"
        )

    def root_device(self, slot: str) -> Path:
        return self._find(f"ROOT-{slot}")

    def device_size(self, device: Path) -> int:
        return int((self.sys_block / device.name / "size").read_text()) * 512

    @contextlib.contextmanager
    def boot(self, writable: bool) -> Iterator[Path]:
        device = self._find("BOOT")
        flags = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
        with self._lock:
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            syscalls.mount(
                str(device), str(self.mountpoint), "ext4", flags | (0 if writable else syscalls.MS_RDONLY)
            )
            try:
                yield self.mountpoint
            finally:
                os.sync()
                syscalls.umount(str(self.mountpoint))


@dataclass
class Job:
    """The upgrade being carried out, as osd polls it."""

    phase: str = "starting"
    done: int = 0
    total: int = 0
    message: str = ""
    error: str = ""
    finished: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Agent:
    """Upgrades for one boot of the init. ``running`` is None on a node not booted from an A/B disk."""

    def __init__(
        self,
        ops: writer.SlotOps,
        root: str | None,
        version: str,
        *,
        log: Callable[[str], None],
        request_reboot: Callable[[], None],
        kube_node: Callable[[], str | None] = lambda: None,
        deadline: float = DEFAULT_DEADLINE,
        staging: Path = STAGING,
        arch: str | None = None,
        force: Callable[[], None] = force_reboot,
    ) -> None:
        self.ops = ops
        self.version = version
        self.log = log
        self.request_reboot = request_reboot
        self.kube_node = kube_node
        self.deadline = deadline
        self.staging = staging
        self.arch = arch
        self.force = force
        self.trial = False
        self.job: Job | None = None
        self._lock = threading.Lock()
        try:
            self.running: str | None = slots.running_slot(root)
            self.not_ab = ""
        except slots.SlotError as exc:
            self.running, self.not_ab = None, str(exc)

    # --- boot ---------------------------------------------------------------------------------

    def on_boot(self, test: str | None = None) -> None:
        """Reconcile grubenv with the slot that booted; a trial slot is noted (see :meth:`watch`)."""
        if self.running is None:
            self.log(f"slots: {self.not_ab}")
            return
        running = self.running
        result: dict[str, bool] = {}

        def change(env: dict[str, str]) -> dict[str, str]:
            new, result["trial"] = slots.on_boot(env, running, self.version)
            return new

        try:
            env = writer.update_env(self.ops, change)
        except (OSError, grubenv.GrubEnvError, slots.SlotError) as exc:  # upgrades off, the node still boots
            self.log(f"slots: cannot read the boot state on BOOT: {exc}")
        else:
            self.trial = result["trial"]
            other = slots.status(env, slots.other(running))
            state = f"slot {running} ({self.version})" + (", on trial" if self.trial else "")
            self.log(
                f"slots: booted {state}; slot {other.slot}: {other.state or 'empty'} {other.version}".rstrip()
            )
            if env.get("talos_failed") and not self.trial:
                self.log(f"slots: {env['talos_failed']}")
        if test == FAIL_INIT:
            raise RuntimeError("talos.test=fail-init: this init fails on purpose (an upgrade test)")

    def watch(
        self, ready: Callable[[], str | None], clock: Callable[[], float] = time.monotonic
    ) -> threading.Thread | None:
        """On a trial boot: mark the slot good once ``ready()`` returns None, or reboot at the deadline."""
        if not self.trial or self.running is None:
            return None
        thread = threading.Thread(target=self._watch, args=(ready, clock), name="upgrade-trial", daemon=True)
        thread.start()
        return thread

    def _watch(self, ready: Callable[[], str | None], clock: Callable[[], float]) -> None:
        assert self.running is not None
        running = self.running
        end = clock() + self.deadline
        why: str | None = "not checked yet"
        while clock() < end:
            why = ready()
            if why is None:
                try:
                    env = writer.update_env(self.ops, lambda e: slots.mark_good(e, running, self.version))
                except (OSError, grubenv.GrubEnvError) as exc:
                    why = f"marking it good failed: {exc}"
                else:
                    self.trial = False
                    self.log(
                        f"slots: slot {running} ({self.version}) is ready: it is the default from now on"
                    )
                    if env.get("talos_cordoned"):
                        self._uncordon()
                    return
            time.sleep(2.0)
        self.log(
            f"slots: slot {running} did not become ready within {self.deadline:.0f} s ({why}): rebooting"
        )
        self.request_reboot()
        time.sleep(FORCE_AFTER)  # the orderly reboot waits for the init to finish its phases
        self.log("slots: the init did not reboot: forcing it")
        self.force()

    def _uncordon(self) -> None:
        from talos_os.upgrade import drain  # the Kubernetes client loads only after an upgrade

        node = self.kube_node()
        for _attempt in range(60):
            try:
                found = drain.Api.of_node() if node else None
                if node and found is None:
                    raise drain.KubeError("the node has no Kubernetes credentials yet")
                if node and found is not None:
                    drain.uncordon(found[0], node)
                    self.log(f"slots: node {node} uncordoned")
                writer.update_env(self.ops, lambda e: {**e, "talos_cordoned": ""})
                return
            except drain.KubeError as exc:
                self.log(f"slots: uncordon: {exc}; retrying")
                time.sleep(10.0)

    # --- control socket -----------------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "upgrade_slots": lambda _req: self.slots(),
            "upgrade_install": self.start_install,
            "upgrade_status": lambda _req: self.job.as_dict() if self.job else None,
            "upgrade_rollback": lambda _req: self.rollback(),
        }

    def slots(self) -> dict[str, Any]:
        if self.running is None:
            return {"ab": False, "message": self.not_ab, "slots": []}
        env = writer.read_env(self.ops)
        default = env.get("saved_entry", "")
        return {
            "ab": True,
            "slots": [
                {
                    "slot": s,
                    "state": (st := slots.status(env, s)).state,
                    "version": st.version,
                    "running": s == self.running,
                    "default": default == slots.entry(s),
                }
                for s in slots.SLOTS
            ],
            "trial": env.get("talos_try", ""),
            "last_failure": env.get("talos_failed", ""),
        }

    def start_install(self, req: dict[str, Any]) -> str:
        if self.running is None:
            raise ControlError(f"cannot upgrade: {self.not_ab}")
        if self.trial:
            raise ControlError(
                f"cannot upgrade: slot {self.running} is still on trial; wait until the node is ready on it"
            )
        path = Path(str(req.get("bundle", "")))
        if path.parent != self.staging or not path.is_file():
            raise ControlError(f"upgrade: {path} is not a bundle in {self.staging}")
        with self._lock:
            if self.job is not None and not self.job.finished:
                raise ControlError("an upgrade is already running on this node: wait for it to finish")
            self.job = Job()
        job = self.job
        threading.Thread(
            target=self._install,
            args=(job, path, bool(req.get("stage")), bool(req.get("drain", True))),
            name="upgrade",
            daemon=True,
        ).start()
        return "started"

    def _install(self, job: Job, path: Path, stage: bool, drain_node: bool) -> None:
        assert self.running is not None

        def progress(phase: str, done: int, total: int) -> None:
            job.phase, job.done, job.total = phase, done, total

        from talos_os.upgrade import drain  # the Kubernetes client loads only when an upgrade runs

        try:
            written = writer.install(path, self.ops, self.running, arch=self.arch, progress=progress)
            self.log(
                f"upgrade: slot {written.slot} holds {written.version} ({written.root_bytes >> 20} MiB root)"
            )
            if stage:
                job.message = (
                    f"slot {written.slot} holds {written.version}; the next reboot tries it once (staged)"
                )
            else:
                node = self.kube_node() if drain_node else None
                if node:
                    job.phase = "draining"
                    self._drain(node)
                job.message = f"slot {written.slot} holds {written.version}; rebooting into it"
        except (bundle.BundleError, slots.SlotError, grubenv.GrubEnvError) as exc:
            job.error = str(exc)
        except (OSError, drain.KubeError) as exc:
            job.error = f"the upgrade failed while writing: {exc}"
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        if job.error:
            self.log(f"upgrade: refused: {job.error}")
        job.phase = "failed" if job.error else ("staged" if stage else "rebooting")
        job.finished = True
        if not job.error and not stage:
            time.sleep(REBOOT_GRACE)
            self.request_reboot()

    def _drain(self, node: str) -> None:
        """Cordon and drain with the node's own credentials (admin.conf on a control plane, the kubelet's
        on a worker); a node that has never joined has none, nothing to evict, and reboots undrained."""
        from talos_os.upgrade import drain

        try:
            found = drain.Api.of_node()
            if found is None:
                self.log(
                    f"upgrade: neither {drain.ADMIN_KUBECONFIG} nor {drain.KUBELET_KUBECONFIG} on this node: "
                    "rebooting without a drain"
                )
                return
            api, kubeconfig = found
            self.log(f"upgrade: draining node {node} with {kubeconfig}")
            writer.update_env(self.ops, lambda e: {**e, "talos_cordoned": "1"})
            drain.drain(api, node, timeout=DRAIN_TIMEOUT, log=self.log)
        except drain.KubeError as exc:  # the node reboots anyway: a drain is a courtesy to the pods
            self.log(f"upgrade: drain: {exc}; rebooting anyway")

    def rollback(self) -> str:
        if self.running is None:
            raise ControlError(f"cannot roll back: {self.not_ab}")
        running = self.running
        target: dict[str, slots.SlotStatus] = {}

        def change(env: dict[str, str]) -> dict[str, str]:
            new, target["st"] = slots.rollback(env, running)
            return new

        try:
            writer.update_env(self.ops, change)
        except slots.SlotError as exc:
            raise ControlError(str(exc)) from None
        st = target["st"]
        self.log(f"rollback: slot {st.slot} ({st.version}) is the default: rebooting")
        threading.Timer(REBOOT_GRACE, self.request_reboot).start()
        return f"slot {st.slot} ({st.version}) is the default now; rebooting into it"


def node_ready(
    osd_port: int, kubernetes: bool, timeout: float = 3.0, kubelet_config: Path = KUBELET_CONFIG
) -> str | None:
    """None when the node is ready (osd answers; with Kubernetes, the kubelet is healthy), else why not.

    The kubelet counts once it has run on this node (its config is on /var): a node that has not
    joined its cluster yet cannot be asked to be healthy there, as it was not before the upgrade."""
    try:
        with socket.create_connection(("127.0.0.1", osd_port), timeout=timeout):
            pass
    except OSError as exc:
        return f"osd does not answer on port {osd_port}: {exc.strerror or exc}"
    if kubernetes and kubelet_config.exists():
        try:
            with urllib.request.urlopen(KUBELET_HEALTHZ, timeout=timeout) as resp:
                if resp.status != 200:
                    return f"the kubelet is not healthy ({resp.status})"
        except OSError as exc:
            return f"the kubelet is not healthy yet: {exc}"
    return None
