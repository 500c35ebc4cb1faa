"""The ``kubeadm`` service of an init node: bootstrap the control plane once, idempotently.

Runs as a one-shot under the init's supervisor (``python -m talos_os.kubernetes.bootstrap``), so
its output is ``osctl logs kubeadm`` and a failure is retried with backoff, never a reboot.

- Bootstrapped before (the stamp on /var exists): nothing to do; the kubelet runs the static pods
  kubeadm wrote, and etcd keeps its data on /var.
- A bootstrap that did not finish (a crash, a power cut, a control plane too slow for kubeadm's
  wait) left files kubeadm's preflight refuses: kubeadm runs again over them with its preflight
  errors ignored; its phases reuse the certificates, kubeconfigs and etcd data they find. Nothing
  is ever reset, so nothing is lost.
- Then the CA files, the kubelet's serving certificate, the audit policy, the encryption config
  and kubeadm's configuration are written from the machine config, and ``kubeadm init`` runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from talos_os.config import load
from talos_os.kubernetes import kubeadm
from talos_os.kubernetes.node import write_files

STAMP = Path("/var/lib/talos/kubernetes/bootstrapped")
KUBEADM = "/usr/bin/kubeadm"
LEFTOVERS = (Path("/etc/kubernetes/manifests/kube-apiserver.yaml"), Path("/var/lib/etcd/member"))


def say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def run_and_stamp(argv: list[str], stamp: Path, what: str, log: Callable[[str], None] = say) -> int:
    """Run kubeadm; on success write ``stamp`` (so a reboot does not run it again) and say how long
    ``what`` took. Shared by ``kubeadm init`` here and ``kubeadm join`` (talos_os.kubernetes.join)."""
    started = time.monotonic()
    log("running " + " ".join(argv))
    code = subprocess.run(argv, check=False).returncode
    if code != 0:
        log(f"kubeadm {argv[1]} failed with {code}; the init retries with backoff")
        return code
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    log(f"{what} in {time.monotonic() - started:.0f} s")
    return 0


def bootstrap(
    config_path: Path, facts: kubeadm.NodeFacts, root: Path = Path("/"), kubeadm_binary: str = KUBEADM
) -> int:
    """Exit status for the supervisor: 0 once the control plane is (or already was) bootstrapped."""
    stamp = root / str(STAMP).lstrip("/")
    if stamp.exists():
        say(f"already bootstrapped ({stamp.read_text().strip()}); the kubelet runs the control plane")
        return 0
    cfg = load(config_path)
    argv = [kubeadm_binary, "init", "--config", str(kubeadm.CONFIG_PATH), "--skip-token-print", "--v=1"]
    files = kubeadm.control_plane_files(cfg, facts)
    if any((root / str(p).lstrip("/")).exists() for p in LEFTOVERS):
        # kubeadm's phases reuse what exists (CA-signed certs, kubeconfigs, etcd's data) and rewrite the
        # manifests as they were; only its preflight refuses to run over them. Never reset: data stays.
        say("an earlier bootstrap did not finish: running kubeadm init again over what it left")
        files = [
            kubeadm.File(f.path, kubeadm.ignore_all_preflight(f.content.decode()).encode(), f.mode)
            if f.path == kubeadm.CONFIG_PATH
            else f
            for f in files
        ]
    write_files(files, root)
    return run_and_stamp(argv, stamp, "control plane bootstrapped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bootstrap this init node's control plane with kubeadm.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args(argv)
    return bootstrap(args.config, kubeadm.NodeFacts(args.hostname, args.address))


if __name__ == "__main__":
    sys.exit(main())
