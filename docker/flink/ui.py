"""docker-compose's `init` step for flink-ui: what ops/flink_ui.py writes natively at start (its nginx config from
stack/config/flink-ui-nginx.conf.j2 and the people's login as a SHA-512 crypt hash in a 0600 file), written with the
containers' paths and names into the flink-ui volume, for the nginx container of that name.

    python docker/flink/ui.py

flink-ui mounts that volume where it is written here (PREFIX) and the flink-client-tls volume where its client
certificate is (TLS_DIR); it runs as nobody, init's user. Three lines differ from the native config: nginx listens
on every interface of its container (the port is published on 127.0.0.1 only), and logs to the container's output
instead of files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptopipe.settings import Settings, load_settings
from ops.flink_ui import FlinkUi

# FlinkUi writes under <var_dir>/run/flink-ui, which is then PREFIX.
VAR_DIR = Path("/var/lib/crypto")
PREFIX = VAR_DIR / "run" / "flink-ui"
TLS_DIR = VAR_DIR / "tls" / "flink"
JOBMANAGER = "flink-jobmanager"


def compose_settings(s: Settings, var_dir: Path = VAR_DIR, tls_dir: Path = TLS_DIR) -> Settings:
    """The settings as seen from flink-ui: the JobManager's service on its container port; nginx on flink_ui_port's
    default, the container port (FLINK_UI_PORT moves only the port published on the host)."""
    defaults = Settings.model_fields
    return s.model_copy(update={"var_dir": var_dir, "flink_tls_dir": tls_dir, "flink_host": JOBMANAGER,
                                "flink_port": defaults["flink_port"].default,
                                "flink_ui_port": defaults["flink_ui_port"].default})


def render(s: Settings, var_dir: Path = VAR_DIR, tls_dir: Path = TLS_DIR) -> Path:
    """Writes nginx.conf and htpasswd into <var_dir>/run/flink-ui; returns the config's path."""
    ui = FlinkUi(compose_settings(s, var_dir, tls_dir))
    # Every interface of its container (published on 127.0.0.1 only); logs to the container's output.
    return ui.write_config(listen=str(ui.port), error_log="stderr", access_log="/dev/stdout")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python {argv[0]}", file=sys.stderr)
        return 2
    print(f"flink-ui: wrote {render(load_settings())} and its login")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
