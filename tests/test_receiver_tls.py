"""DICOM over TLS on the receiver's second port, with real TLS peers over loopback: pynetdicom
with an ssl.SSLContext and DCMTK's storescu. Certificates are made by openssl in the test."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE

from appliance.bench.harness.processes import free_ports
from appliance.domain import StoreStatus
from appliance.errors import ConfigError
from appliance.receiver import Receiver
from appliance.samples import write_sample
from appliance.store import Store
from appliance.store.audit import recent

from conftest import needs_dcmtk, storescu, wait_for

StartReceiver = Callable[..., tuple[Receiver, Store]]
FLOOR = {"free_space_floor_mb": 1}


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signs client certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def self_signed(folder: Path, name: str, *extra: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-keyout", key, "-out", cert, "-subj", f"/CN={name}", *extra,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    server_cert, server_key = self_signed(
        folder, "localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"
    )
    ca, ca_key = self_signed(folder, "clinic-ca")
    client_key, request = folder / "modality.key", folder / "modality.csr"
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", client_key, "-out", request, "-subj", "/CN=modality",
    )  # fmt: skip
    client_cert = folder / "modality.pem"
    openssl(
        "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-out", client_cert,
    )  # fmt: skip
    return Pki(ca, server_cert, server_key, client_cert, client_key)


def tls_settings(pki: Pki, client_ca: bool = False, **receiver: Any) -> dict[str, Any]:
    [port] = free_ports(1)
    tls: dict[str, Any] = {"port": port, "certificate": str(pki.server_cert)}
    tls["key"] = str(pki.server_key)
    if client_ca:
        tls["client_ca"] = str(pki.ca)
    return {"storage": FLOOR, "receiver": {"tls": tls, **receiver}}


def client_context(pki: Pki, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.server_cert)
    if with_certificate:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def tls_store(
    address: tuple[str, int], path: Path, context: ssl.SSLContext
) -> tuple[bool, int | None]:
    """(association established, C-STORE status) over TLS from a pynetdicom SCU."""
    ae = AE(ae_title="TLS-SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(pydicom.dcmread(path).SOPClassUID)
    assoc = ae.associate(*address, ae_title="APPLIANCE", tls_args=(context, "localhost"))
    if not assoc.is_established:
        return False, None
    try:
        response = assoc.send_c_store(path)
    finally:
        assoc.release()
    return True, int(response.Status) if "Status" in response else None


def stored(store: Store, path: Path) -> bool:
    uid = str(pydicom.dcmread(path).SOPInstanceUID)
    query = "SELECT 1 FROM instances WHERE sop_instance_uid = ? AND state = 'present'"
    return store.conn.execute(query, (uid,)).fetchone() is not None


def test_a_c_store_over_tls_is_stored_and_the_plain_port_stays(
    start_receiver: StartReceiver, pki: Pki, inputs: Path
) -> None:
    receiver, store = start_receiver(**tls_settings(pki))
    assert receiver.tls_address is not None
    over_tls = write_sample(inputs / "tls.dcm", "ct", seed=1, rows=16, columns=16)
    plain = write_sample(inputs / "plain.dcm", "ct", seed=2, rows=16, columns=16)

    assert tls_store(receiver.tls_address, over_tls, client_context(pki)) == (True, 0)
    assert stored(store, over_tls)

    ae = AE(ae_title="PLAIN-SCU")
    ae.add_requested_context(pydicom.dcmread(plain).SOPClassUID)
    assoc = ae.associate(*receiver.address, ae_title="APPLIANCE")
    assert assoc.is_established
    assert assoc.send_c_store(plain).Status == StoreStatus.SUCCESS
    assoc.release()
    assert stored(store, plain)


def test_with_a_client_ca_only_a_certified_peer_gets_in(
    start_receiver: StartReceiver, pki: Pki, inputs: Path
) -> None:
    receiver, store = start_receiver(**tls_settings(pki, client_ca=True))
    assert receiver.tls_address is not None
    image = write_sample(inputs / "ct.dcm", "ct", seed=3, rows=16, columns=16)

    assert tls_store(receiver.tls_address, image, client_context(pki))[0] is False
    rows = wait_for(lambda: recent(store.conn, "association.refused"), what="the refusal")
    assert rows[0]["actor"] == "ip:127.0.0.1"
    assert "TLS handshake failed" in rows[0]["detail"]["reason"]
    assert not stored(store, image)

    certified = client_context(pki, with_certificate=True)
    assert tls_store(receiver.tls_address, image, certified) == (True, StoreStatus.SUCCESS)
    assert stored(store, image)


def test_a_stalled_tls_handshake_holds_up_nobody_and_is_dropped(
    start_receiver: StartReceiver, pki: Pki, inputs: Path
) -> None:
    receiver, store = start_receiver(**tls_settings(pki, acse_timeout_s=1.0))
    assert receiver.tls_address is not None
    source = socket.socket()
    source.bind(("127.0.0.9", 0))
    source.connect(receiver.tls_address)  # and never says hello
    image = write_sample(inputs / "ct.dcm", "ct", seed=4, rows=16, columns=16)
    try:
        assert tls_store(receiver.tls_address, image, client_context(pki)) == (True, 0)
        [row] = wait_for(lambda: recent(store.conn, "association.dropped"), what="the drop")
    finally:
        source.close()
    assert row["actor"] == "ip:127.0.0.9"
    assert "no association within 1 s of connecting" in row["detail"]["reason"]


def test_an_unreadable_certificate_stops_the_start_naming_the_setting(
    start_receiver: StartReceiver, pki: Pki, tmp_path: Path
) -> None:
    settings = tls_settings(pki)
    settings["receiver"]["tls"]["certificate"] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"receiver\.tls\.certificate"):
        start_receiver(**settings)


@needs_dcmtk
def test_storescu_stores_over_tls(start_receiver: StartReceiver, pki: Pki, inputs: Path) -> None:
    if (
        "+tls"
        not in subprocess.run(
            ["storescu", "--help"], capture_output=True, text=True, check=False
        ).stdout
    ):
        pytest.skip("this storescu is built without TLS")
    receiver, store = start_receiver(**tls_settings(pki, client_ca=True))
    assert receiver.tls_address is not None
    image = write_sample(inputs / "ct.dcm", "ct", seed=5, rows=16, columns=16)

    result = storescu(
        receiver.tls_address,
        image,
        options=[
            "-aet", "DCMTK-TLS", "+tls", str(pki.client_key), str(pki.client_cert),
            "+cf", str(pki.server_cert),
        ],
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert stored(store, image)
