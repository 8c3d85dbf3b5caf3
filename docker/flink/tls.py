"""docker-compose's `flink-tls` step (`--profile flink`): Flink's TLS material, made by ops/flink_tls.py as `make up`
makes it natively, then handed to the two accounts that read it.

    python docker/flink/tls.py <client folder>

- FLINK_TLS_DIR (on the flink-tls volume) keeps all of it, owned by Flink's account: the JobManager, TaskManager and
  SQL Gateway read the stores, and flink-deploy (which runs as that account too) the client certificate. Next to it
  flink-ssl.yaml, the security.ssl.* options of FlinkTls.flink_options(), which each Flink container adds to its
  config.yaml at start: they hold the stores' password, which must not go through a command line.
- <client folder> (on the flink-client-tls volume) gets the CA and the client certificate only, owned by nobody: the
  monitor (a Python container) and flink-ui's nginx run as nobody.

It runs as root for that hand-over; it needs no secret. The server certificate names the JobManager's service too
(flink-jobmanager), the name the other containers reach it by and check its certificate against.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cryptopipe.settings import load_settings
from ops import flink_tls
from ops.services import write_private

FLINK_UID = 9999  # the `flink` user of Flink's image, which docker/flink/Dockerfile runs as
NOBODY_UID = 65534  # the Python image's user (docker/python/Dockerfile) and flink-ui's
JOBMANAGER = "flink-jobmanager"
OPTIONS_FILE = "flink-ssl.yaml"
CLIENT_FILES = ("ca.crt", "client.crt", "client.key")


def options_yaml(tls: flink_tls.FlinkTls) -> str:
    # JSON strings are YAML strings: a password of digits only stays a string. The newline first, in case the file
    # it is appended to does not end with one.
    lines = [f"{key}: {json.dumps(value)}" for key, value in tls.flink_options().items()]
    return "\n# Added at start from the flink-tls volume (docker/flink/tls.py).\n" + "\n".join(lines) + "\n"


def make(tls_dir: Path, client_dir: Path, java: str) -> flink_tls.FlinkTls:
    """The material under tls_dir (made once, as natively), its options file, and the client's copy in client_dir."""
    tls = flink_tls.ensure(tls_dir, java, names=(JOBMANAGER,))
    write_private(tls.dir / OPTIONS_FILE, options_yaml(tls))
    client_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    client_dir.chmod(0o700)
    for name in CLIENT_FILES:
        write_private(client_dir / name, (tls.dir / name).read_text())
    return tls


def hand_over(folder: Path, uid: int) -> None:
    for path in (folder, *folder.iterdir()):
        os.chown(path, uid, uid)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python {argv[0]} <client folder>", file=sys.stderr)
        return 2
    settings = load_settings()
    client_dir = Path(argv[1])
    tls = make(settings.flink_tls_dir, client_dir, settings.java)
    hand_over(tls.dir, FLINK_UID)
    hand_over(client_dir, NOBODY_UID)
    print(f"flink-tls: {tls.dir} for uid {FLINK_UID}; {', '.join(CLIENT_FILES)} in {client_dir} for uid {NOBODY_UID}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
