"""The admin kubeconfig a control-plane node makes before Kubernetes is bootstrapped."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from talos_os import pki
from talos_os.config import loads
from talos_os.config.generate import generate
from talos_os.osd.kubeconfig import ADMIN_GROUP, ADMIN_USER, NoKubeconfig, admin_kubeconfig


def test_control_plane_makes_an_admin_kubeconfig_that_kubectl_and_openssl_accept(tmp_path: Path) -> None:
    generated = generate("demo", "https://10.5.0.2:6443")
    cfg = loads(generated.controlplane)
    path = tmp_path / "kubeconfig"
    path.write_bytes(admin_kubeconfig(cfg))
    doc = yaml.safe_load(path.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://10.5.0.2:6443"
    user = doc["users"][0]["user"]
    cert = pki.load_certificate(base64.b64decode(user["client-certificate-data"]))
    assert cert.subject.rfc4514_string() == f"CN={ADMIN_USER},O={ADMIN_GROUP}"
    pki.verify_issued_by(cert, cfg.cluster.ca.certificate())  # signed by the cluster CA

    ca_file, cert_file = tmp_path / "ca.crt", tmp_path / "admin.crt"
    ca_file.write_bytes(cfg.cluster.ca.crt_pem)
    cert_file.write_bytes(base64.b64decode(user["client-certificate-data"]))
    ok = subprocess.run(["openssl", "verify", "-CAfile", ca_file, cert_file], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip().endswith("OK"), ok.stderr

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (Debian package kubernetes-client) is not installed")
    view = subprocess.run(
        [kubectl, "--kubeconfig", str(path), "config", "view", "--raw", "-o",
         "jsonpath={.contexts[0].context.user} {.clusters[0].cluster.server}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert view.returncode == 0, view.stderr
    assert view.stdout == "admin@demo https://10.5.0.2:6443"


def test_a_worker_has_no_ca_key_to_make_one() -> None:
    cfg = loads(generate("demo", "https://10.5.0.2:6443").worker)
    with pytest.raises(NoKubeconfig, match="no Kubernetes CA key"):
        admin_kubeconfig(cfg)
