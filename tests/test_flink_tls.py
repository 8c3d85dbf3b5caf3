"""Flink's REST TLS material (ops/flink_tls.py), without the stack: a private CA whose server certificate a TLS
server requiring client certificates serves, and whose client certificate is the only way in."""

from __future__ import annotations

import http.server
import ssl
import stat
import subprocess
import threading
from types import SimpleNamespace

import pytest
import requests

from ops.flink_tls import FILES, ensure, session

from .helpers import free_port


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return ensure(tmp_path_factory.mktemp("tls") / "flink-tls", "java")


def test_every_file_is_readable_by_its_owner_only(tls):
    assert stat.S_IMODE(tls.dir.stat().st_mode) == 0o700
    for name in FILES:
        assert stat.S_IMODE((tls.dir / name).stat().st_mode) == 0o600, name
    assert sorted(p.name for p in tls.dir.iterdir()) == sorted(FILES)  # no CSR, extension or serial file left


def test_the_certificates_chain_to_the_ca_and_the_server_names_loopback(tls):
    check = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "server.crt", "client.crt"], cwd=tls.dir,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = subprocess.run(["openssl", "x509", "-in", "server.crt", "-noout", "-text"], cwd=tls.dir,
                          capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text  # the gateway's client cert too
    assert "rsaEncryption" in text  # Flink's default ciphers are ECDHE_RSA only


def test_the_truststore_holds_the_ca_as_a_trusted_entry_for_java(tls):
    listed = subprocess.run(["keytool", "-list", "-keystore", "rest.truststore.p12", "-storetype", "PKCS12",
                             "-storepass:file", "store.password"], cwd=tls.dir, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "trustedCertEntry" in listed.stdout
    keystore = subprocess.run(["keytool", "-list", "-keystore", "rest.keystore.p12", "-storetype", "PKCS12",
                               "-storepass:file", "store.password"], cwd=tls.dir, capture_output=True, text=True)
    assert keystore.returncode == 0 and "PrivateKeyEntry" in keystore.stdout, keystore.stderr


def test_only_a_client_with_the_certificate_gets_in(tls):
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.dir / "server.crt", tls.dir / "server.key")
    context.load_verify_locations(tls.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/overview"
    try:
        assert requests.get(url, timeout=5, **tls.requests_args()).text == "ok"
        # The stack's session too, where the environment names the public CAs (REQUESTS_CA_BUNDLE, as here).
        with pytest.MonkeyPatch.context() as env:
            env.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile or "/etc/ssl/certs/ca-certificates.crt")
            assert session(SimpleNamespace(flink_tls_dir=tls.dir)).get(url, timeout=5).text == "ok"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=5, verify=str(tls.ca))  # no client certificate: the handshake fails
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=5)  # and a client that does not know the CA refuses the server
    finally:
        server.shutdown()


def test_made_once_and_made_again_when_a_file_is_missing(tls):
    before = (tls.dir / "ca.crt").read_bytes()
    assert ensure(tls.dir, "java").ca.read_bytes() == before
    (tls.dir / "client.key").unlink()
    again = ensure(tls.dir, "java")
    assert again.ca.read_bytes() != before and all((tls.dir / name).exists() for name in FILES)


def test_flink_options_name_the_stores_and_the_truststore(tls):
    options = tls.flink_options()
    assert options["security.ssl.rest.authentication-enabled"] == "true"
    # Without a truststore Flink would accept any client while saying it authenticates them.
    assert options["security.ssl.rest.truststore"].endswith("rest.truststore.p12")
    assert options["security.ssl.rest.keystore-password"] == (tls.dir / "store.password").read_text().strip()
