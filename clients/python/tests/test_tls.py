"""TLS on the provider port via ssl.SSLContext (self-signed certificate made with openssl)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time

import pytest
from device import Device
from gateway import Gateway

import pushgate

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture
def tls_gateway(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[tls]\ncert = "%s"\nkey = "%s"\nprovider = true\n' % (cert, key))
    gw = Gateway(tmp_path / "data", config=cfg)
    gw.cert = cert
    yield gw
    gw.stop()


def test_push_over_tls(tls_gateway):
    ctx = ssl.create_default_context(cafile=str(tls_gateway.cert))
    with pushgate.Provider(tls_gateway.provider_address, "demo", tls_gateway.secret,
                           ssl_context=ctx, server_hostname="localhost", timeout=10) as p:
        with Device(tls_gateway.device) as dev:
            res = p.push_all([pushgate.Notification(dev.token, b"%d" % i) for i in range(90)])
            assert all(r.status == "delivered" for r in res[:64])
            assert [dev.recv_notify().payload for _ in range(90)] == [b"%d" % i for i in range(90)]
        assert p.ping() >= 0


def test_tls_rejects_an_untrusted_certificate(tls_gateway):
    ctx = ssl.create_default_context()  # system CAs only: the self-signed cert is not trusted
    with pytest.raises(ssl.SSLCertVerificationError):
        pushgate.Provider(tls_gateway.provider_address, "demo", tls_gateway.secret,
                          ssl_context=ctx, server_hostname="localhost", connect_timeout=5)


def test_plain_client_on_tls_port_fails_fast(tls_gateway):
    # The gateway answers the plaintext AUTH_HELLO with a TLS alert record (type 0x15).
    start = time.monotonic()
    with pytest.raises((pushgate.ProtocolError, pushgate.ConnectionLost)):
        pushgate.Provider(tls_gateway.provider_address, "demo", tls_gateway.secret, connect_timeout=3)
    assert time.monotonic() - start < 2
