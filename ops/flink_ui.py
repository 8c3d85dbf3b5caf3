"""Flink's web UI for people: Debian's nginx on FLINK_UI_PORT (127.0.0.1) asks for the people's login
(MONITORING_USER, as Prometheus and Alertmanager do) and passes GET requests on to the JobManager's REST API over
mutual TLS, holding the stack's client certificate (ops/flink_tls.py). A browser needs no certificate of its own.

Read-only: every other method is refused, and so are the two GET routes that cancel or stop a job. nginx runs
unprivileged, its config rendered from stack/config/flink-ui-nginx.conf.j2 into var/run/flink-ui at every start,
with the password as a SHA-512 crypt hash in a 0600 file. Not bcrypt: nginx checks the hash on every request,
and the UI polls a dozen of them every few seconds.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ops.monitoring import MonitoringService, debian_binary, people_login
from ops.services import CONFIG_DIR, write_private


def crypt_sha512(password: str) -> str:
    # The password goes to openssl on stdin, never on a command line (which every user sees).
    out = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", capture_output=True,
                         text=True, timeout=30, check=True)
    return out.stdout.strip()


class FlinkUi(MonitoringService):
    name, port_var, marker, binary = "flink-ui", "FLINK_UI_PORT", "flink-ui/nginx.conf", "nginx"
    probe = "/config"

    @property
    def port(self) -> int:
        return self.s.flink_ui_port

    @property
    def prefix(self) -> Path:
        return self.run_dir / "flink-ui"

    def login(self) -> tuple[str, str]:
        return people_login(self.s)

    def write_config(self, listen: str = "", error_log: str = "", access_log: str = "") -> Path:
        """nginx.conf and the login under `prefix`; docker-compose's flink-ui passes its own address and logs."""
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        self.prefix.chmod(0o700)
        user, password = self.login()
        write_private(self.prefix / "htpasswd", f"{user}:{crypt_sha512(password)}\n")
        env = Environment(loader=FileSystemLoader(CONFIG_DIR), undefined=StrictUndefined, keep_trailing_newline=True,
                          trim_blocks=True, lstrip_blocks=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(env.get_template("flink-ui-nginx.conf.j2").render(
            user=pwd.getpwuid(os.getuid()).pw_name if os.getuid() == 0 else "", prefix=self.prefix,
            listen=listen or f"127.0.0.1:{self.port}", error_log=error_log or f"{self.s.logs_dir}/flink-ui.log",
            access_log=access_log or f"{self.s.logs_dir}/flink-ui.access.log", flink_host=self.s.flink_host,
            flink_port=self.s.flink_port, tls_dir=self.s.flink_tls_dir))
        return conf

    def start(self) -> None:
        conf = self.write_config()
        self.spawn([debian_binary(self.binary), "-p", str(self.prefix), "-c", str(conf), "-e", str(self.log_file)])
