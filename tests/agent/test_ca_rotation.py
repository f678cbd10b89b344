"""Rotating the fleet CA without cutting off a connected fleet (real gRPC, real certificates,
real ``bronze-agent`` processes): the two steps of ``server.agents.pki_files``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509

from server.agents import AgentApiServer
from server.agents.pki import FleetCA, cert_to_pem
from server.agents.pki_files import retire_previous_ca, rotate_ca
from tests.support.agentlab import Lab
from tests.support.wait import eventually


def _restart(lab: Lab, ca: FleetCA, pki: Path) -> None:
    old = lab.api
    lab.lt.run(old.stop(0))
    lab.ca = ca
    lab.api = AgentApiServer(
        lab.store,
        ca,
        enroll_port=old.enroll_port,
        session_port=old.session_port,
        heartbeat_interval=1.0,
        pki_dir=pki,
    )
    lab.lt.run(lab.api.start())


def _issuer(root: Path) -> x509.Name:
    return x509.load_pem_x509_certificate((root / "var/lib/bronze/cert.pem").read_bytes()).issuer


def _trusted(root: Path) -> int:
    return len(x509.load_pem_x509_certificates((root / "var/lib/bronze/ca.pem").read_bytes()))


def test_rotation_keeps_old_ca_agents_connected_while_new_ca_signs(lab: Lab) -> None:
    pki = lab.tmp / "ca"
    _restart(lab, lab.ca, pki)
    old_ca = lab.ca.cert
    root_a, _ = lab.start_machine("m-a")
    assert _issuer(root_a) == old_ca.subject and _trusted(root_a) == 1

    # Step 1: a new CA signs; the old one stays trusted; the server keeps its certificate.
    server_cert = lab.api.server_cert
    new_ca = rotate_ca(pki)
    assert new_ca.cert != old_ca and new_ca.previous == (old_ca,)
    _restart(lab, new_ca, pki)
    assert lab.api.server_cert == server_cert  # issued by the old CA, which every agent trusts
    # The agent holding an old-CA client certificate reconnects and keeps working.
    eventually(lambda: lab.api.hub.is_connected("m-a"), 30)
    assert _issuer(root_a) == old_ca.subject

    # A machine booting an old image (only the old CA baked in) enrolls: new-CA certificate.
    lab.store.add_machine("m-b")
    root_b = lab.machine_root("m-b", token=lab.issue_token("m-b"))
    (root_b / "etc/bronze/ca.pem").write_bytes(cert_to_pem(old_ca))
    lab.spawn_agent(root_b)
    eventually(lambda: lab.api.hub.is_connected("m-b"), 30)
    assert _issuer(root_b) == new_ca.cert.subject and _trusted(root_b) == 2

    # The old-CA agent renews: a new-CA certificate and the two-CA bundle.
    lab.lt.run(lab.api.hub.renew_certificate("m-a"))
    eventually(lambda: _issuer(root_a) == new_ca.cert.subject and _trusted(root_a) == 2, 30)

    # Step 2: retire the old CA; the server certificate is reissued by the new CA at start.
    assert retire_previous_ca(pki)
    _restart(lab, FleetCA.load_or_create(pki), pki)
    assert lab.api.server_cert.issuer == new_ca.cert.subject
    assert lab.api.server_cert != server_cert
    eventually(lambda: lab.api.hub.is_connected("m-a") and lab.api.hub.is_connected("m-b"), 30)


def test_ca_cli_rotate_then_retire(tmp_path: Path) -> None:
    bronze = str(Path(sys.executable).with_name("bronze"))
    pki = tmp_path / "pki"

    def ca(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [bronze, "ca", *args, "--pki-dir", str(pki)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    assert ca("status").returncode == 1  # no CA: nothing created by a status
    first = FleetCA.load_or_create(pki)
    r = ca("rotate")
    assert r.returncode == 0, r.stderr
    assert FleetCA.load_or_create(pki).previous == (first.cert,)
    r = ca("rotate")
    assert r.returncode == 1 and "retire the previous CA first" in r.stderr
    assert ca("status").stdout.count("previous") == 1
    assert ca("retire-previous").returncode == 0
    assert FleetCA.load_or_create(pki).previous == ()
    assert ca("retire-previous").returncode == 1
