"""osd starts from a few values read straight from the YAML (no pydantic); they must be the model's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from talos_os import pki
from talos_os.config import generate, load
from talos_os.osd import __main__ as osd_main
from talos_os.osd import startconfig
from talos_os.osd.auth import server_identity


@pytest.fixture(scope="module")
def generated() -> generate.Generated:
    return generate.generate("startcfg", "https://10.5.0.2:6443")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_start_values_are_the_models(tmp_path: Path, generated: generate.Generated) -> None:
    doc = yaml.safe_load(generated.controlplane)
    doc["machine"]["certSANs"] = ["api.example.org", "10.9.9.9"]
    doc["machine"]["network"] = {"hostname": "cp1"}
    path = _write(tmp_path, yaml.safe_dump(doc))
    fast, model = startconfig.read(path), load(path)
    assert fast.machine.ca.crt == model.machine.ca.crt and fast.machine.ca.key == model.machine.ca.key
    assert fast.machine.ca.certificate() == model.machine.ca.certificate()
    assert fast.machine.cert_sans == list(model.machine.cert_sans)
    assert fast.machine.network is not None and fast.machine.network.hostname == "cp1"
    assert fast.machine.identity is None and model.machine.identity is None
    cert, source = server_identity(fast, ["10.0.2.15"], "cp1")
    assert source == "issued by machine.ca"
    pki.verify_issued_by(cert.cert, model.machine.ca.certificate())
    assert startconfig.full_config(path) == model


def test_machine_identity_is_taken_as_is(tmp_path: Path, generated: generate.Generated) -> None:
    doc = yaml.safe_load(generated.controlplane)
    ca = pki.CertKey.from_b64(doc["machine"]["ca"]["crt"], doc["machine"]["ca"]["key"])
    own = pki.issue_certificate(ca, "node", dns_names=["node"], usage="server")
    doc["machine"]["identity"] = {"crt": pki.b64encode(own.cert_pem), "key": pki.b64encode(own.key_pem)}
    cert, source = server_identity(startconfig.read(_write(tmp_path, yaml.safe_dump(doc))), [], "node")
    assert source == "machine.identity" and cert.cert_pem == own.cert_pem


def test_a_config_the_fast_read_refuses_gets_the_loaders_message(tmp_path: Path) -> None:
    path = _write(tmp_path, "machine:\n  ca: {}\n")
    with pytest.raises(startconfig.StartConfigError, match=r"machine\.ca\.crt"):
        startconfig.read(path)
    with pytest.raises(osd_main.UnusableConfig, match="machine"):
        osd_main.start_config(path)
    with pytest.raises(osd_main.UnusableConfig):
        osd_main.start_config(tmp_path / "missing.yaml")


def test_osd_starts_without_the_config_model() -> None:
    """Importing osd's entry point must not load pydantic: that was half of its start under emulation."""
    code = "import sys, talos_os.osd.__main__; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_startup_line_names_imports_and_serving(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("42 (python3 (x)) S " + " ".join(["0"] * 16) + " 500 0 0\n")
    assert osd_main.process_start(stat) is not None
    assert "serving" in osd_main.startup_times(0.0)
    split = osd_main.startup_times(0.0, steps=[("config", 0.04), ("identity", 1.26), ("TLS 1.2 check", 0.5)])
    assert "s later (config 0.0 s, identity 1.3 s, TLS 1.2 check 0.5 s), " in split


def test_a_tls12_breach_found_beside_serving_ends_osd_and_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    """police_tls (osd's thread beside serving): a server that accepted TLS 1.2 (prove_tls_policy
    stopped it and raised) marks the breach, so main returns 1, and ends main's wait."""
    import threading

    from talos_os.osd.server import OsdError

    class Breached:
        tls_check_seconds = 0.2

        def prove_tls_policy(self) -> None:
            raise OsdError("grpc accepted a TLS 1.2 handshake, so osd refuses to serve")

    stopping, breached = threading.Event(), threading.Event()
    osd_main.police_tls(Breached(), stopping, breached)  # type: ignore[arg-type]
    assert stopping.is_set() and breached.is_set()
    assert "osd: grpc accepted a TLS 1.2 handshake" in capsys.readouterr().err
