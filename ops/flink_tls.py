"""Flink's TLS material: a private CA, the certificate the JobManager and the SQL Gateway serve (and present to
each other as Flink's REST client, and Flink's processes to each other on their internal connections), and a
client certificate for everything of ours that calls them.

Made once under var/run/flink/tls by `make up`: openssl for the keys and certificates, the JDK's keytool for the
truststore. Every file is 0600 in a 0700 folder, and none is committed. What Flink 2.3 needs, checked in its jars:
- PKCS12 stores: the keystore holds the server key and chain; the truststore holds the CA. The truststore must
  exist, or "authentication-enabled" silently accepts any client. A truststore made by openssl lacks Java's
  trusted-certificate attribute, so keytool makes it.
- RSA keys: Flink's default REST ciphers are ECDHE_RSA only.
- A server certificate that is also a client certificate (serverAuth and clientAuth): the SQL Gateway presents
  the same keystore when it calls the JobManager.
Python's requests and nginx take the PEM files (the client key unencrypted: requests cannot take a key password).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

from ops.process import StackError

FILES = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key", "rest.keystore.p12",
         "rest.truststore.p12", "store.password")
DAYS = 825  # the longest validity clients still accept for a leaf certificate
SERVER_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost{names}\n")
CLIENT_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" \
             "extendedKeyUsage=clientAuth\n"


@dataclass(frozen=True)
class FlinkTls:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def client(self) -> tuple[Path, Path]:
        """(certificate, key) in PEM, for requests' `cert=` and nginx's proxy_ssl_certificate(_key)."""
        return self.dir / "client.crt", self.dir / "client.key"

    def requests_args(self) -> dict:
        """What a requests call to Flink's REST API or SQL Gateway needs: the client certificate, and the CA."""
        return {"cert": tuple(str(p) for p in self.client), "verify": str(self.ca)}

    def flink_options(self) -> dict[str, str]:
        """The security.ssl.* options of Flink's config.yaml (the file holding them is 0600): mutual TLS on the REST
        endpoints, and between Flink's own processes (RPC, blobs, the data shuffle; always mutual there), so another
        account on the host cannot talk to the JobManager's RPC port as a TaskManager would either."""
        password = (self.dir / "store.password").read_text().strip()
        stores = {"keystore": str(self.dir / "rest.keystore.p12"), "keystore-password": password,
                  "key-password": password, "truststore": str(self.dir / "rest.truststore.p12"),
                  "truststore-password": password}
        return {"security.ssl.rest.enabled": "true", "security.ssl.rest.authentication-enabled": "true",
                **{f"security.ssl.rest.{k}": v for k, v in stores.items()},
                "security.ssl.internal.enabled": "true",
                **{f"security.ssl.internal.{k}": v for k, v in stores.items()}}


def session(settings) -> requests.Session:
    """A requests session for Flink's REST API and SQL Gateway: the client certificate, and the CA to check them."""
    http = requests.Session()
    http.cert, http.verify = FlinkTls(settings.flink_tls_dir).requests_args().values()
    # A session's own `verify` loses to REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE from the environment (set on many
    # machines, this one included), which hold the public CAs, not ours; and loopback needs no proxy from it either.
    http.trust_env = False
    return http


def ensure(tls_dir: Path, java: str, names: tuple[str, ...] = ()) -> FlinkTls:
    """The TLS material under `tls_dir`, made when any file of it is missing (all of it again then: a CA without
    its certificates, or the reverse, is of no use). `names`: host names the server certificate carries besides
localhost (docker-compose's service name)."""
    tls = FlinkTls(tls_dir)
    if all((tls_dir / name).exists() for name in FILES):
        return tls
    openssl = shutil.which("openssl")
    keytool = shutil.which("keytool") or _next_to(java, "keytool")
    if openssl is None or keytool is None:
        raise StackError("openssl and the JDK's keytool are needed for Flink's REST certificates: run `make setup` "
                         "(as root: apt-get install openssl openjdk-17-jdk-headless).")
    shutil.rmtree(tls_dir, ignore_errors=True)
    tls_dir.mkdir(parents=True, mode=0o700)
    password = secrets.token_hex(16)
    old_umask = os.umask(0o077)
    try:
        (tls_dir / "store.password").write_text(password + "\n")
        (tls_dir / "server.ext").write_text(SERVER_EXT.format(names="".join(f",DNS:{n}" for n in names)))
        (tls_dir / "client.ext").write_text(CLIENT_EXT)
        steps = [
            [openssl, "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-days", "3650", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=cryptopipe flink-rest CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            *_leaf(openssl, "server", "/CN=localhost"),
            *_leaf(openssl, "client", "/CN=cryptopipe"),
            # The password goes through a file, never the process list.
            [openssl, "pkcs12", "-export", "-in", "server.crt", "-inkey", "server.key", "-certfile", "ca.crt",
             "-name", "flink-rest", "-out", "rest.keystore.p12", "-passout", "file:store.password"],
            [keytool, "-importcert", "-noprompt", "-alias", "flink-rest-ca", "-file", "ca.crt",
             "-keystore", "rest.truststore.p12", "-storetype", "PKCS12", "-storepass:file", "store.password"],
        ]
        for argv in steps:
            done = subprocess.run(argv, cwd=tls_dir, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                shutil.rmtree(tls_dir, ignore_errors=True)
                raise StackError(f"making Flink's REST certificates failed at `{' '.join(argv[:3])}`: "
                                 f"{(done.stderr or done.stdout).strip()[-300:]}")
    finally:
        os.umask(old_umask)
    for leftover in ("server.csr", "client.csr", "server.ext", "client.ext", "ca.srl"):
        (tls_dir / leftover).unlink(missing_ok=True)
    for name in FILES:
        (tls_dir / name).chmod(0o600)
    return tls


def _leaf(openssl: str, name: str, subject: str) -> list[list[str]]:
    return [
        [openssl, "req", "-new", "-newkey", "rsa:3072", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
         "-subj", subject],
        [openssl, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", str(DAYS), "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt"],
    ]


def _next_to(java: str, tool: str) -> str | None:
    found = shutil.which(java)
    if found is None:
        return None
    candidate = Path(found).resolve().parent / tool
    return str(candidate) if candidate.exists() else None
