"""PostgreSQL in the native stack: a cluster of its own in var/postgres, from Debian's server binaries.

PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as, the `postgres` system user.
Local (socket) connections are trusted only through var/run/pg, which only that user reaches; TCP on
127.0.0.1 asks for a password (scram-sha-256).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

from ops.process import StackError, pid_from_file, rotate_at_start
from ops.services import CONFIG_DIR, Service


class Postgres(Service):
    name, port_var, marker = "postgres", "PG_PORT", "postgres"
    # pg_ctl starts it as a daemon, not under ops.supervise; its postmaster restarts crashed backends.
    supervised = False

    @property
    def port(self) -> int:
        return self.s.pg_port

    @property
    def data(self) -> Path:
        return self.s.var_dir / "postgres"

    def pid(self) -> int | None:
        return pid_from_file(self.data / "postmaster.pid", self.marker)

    def bindir(self) -> Path:
        if self.s.pg_bindir:
            candidates = [Path(self.s.pg_bindir)]
        else:
            found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
            candidates = [p.parent for p in reversed(found)]
            if shutil.which("pg_ctl"):
                candidates.append(Path(shutil.which("pg_ctl")).resolve().parent)
        for bindir in candidates:
            if (bindir / "postgres").exists() and (bindir / "initdb").exists():
                return bindir
        raise StackError(
            "PostgreSQL server binaries not found: run `make setup` (as root it installs postgresql-15), "
            "or set PG_BINDIR to the folder holding postgres, initdb and pg_ctl."
        )

    def preflight(self) -> None:
        bindir = self.bindir()
        version_file = self.data / "PG_VERSION"
        if not version_file.exists():
            return
        data_major = version_file.read_text().strip()
        server = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
        server_major = re.search(r"PostgreSQL\) (\d+)", server).group(1)
        if data_major != server_major:
            raise StackError(
                f"{self.data} holds a PostgreSQL {data_major} cluster but the server found is "
                f"PostgreSQL {server_major}. Nothing was deleted. Set PG_BINDIR to a PostgreSQL {data_major} "
                f"bin folder, or move the folder away (after pg_dumpall with the old server) to start afresh."
            )

    def system_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise StackError("Running as root, but there is no `postgres` system user: run `make setup`.") from None
        return "postgres"

    def as_system_user(self, argv: list[str]) -> list[str]:
        user = self.system_user()
        return ["runuser", "-u", user, "--", *argv] if user else argv

    def give_to_system_user(self, *paths: Path) -> None:
        user = self.system_user()
        for path in paths:
            if user:
                shutil.chown(path, user, user)

    def start(self) -> None:
        bindir = self.bindir()
        sock = self.run_dir / "pg"
        sock.mkdir(parents=True, exist_ok=True)
        rotate_at_start(self.log_file, self.s.log_max_bytes, self.s.log_backups)
        self.log_file.touch()
        self.give_to_system_user(sock, self.log_file)
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(parents=True, exist_ok=True)
            self.data.chmod(0o700)
            self.give_to_system_user(self.data)
            subprocess.run(
                self.as_system_user([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                                     "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"]),
                check=True, stdout=subprocess.DEVNULL,
            )
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write("\n" + (CONFIG_DIR / "postgresql.conf").read_text())
        subprocess.run(
            self.as_system_user([str(bindir / "pg_ctl"), "start", "-w", "-t", str(int(self.s.start_timeout_s)),
                                 "-D", str(self.data), "-l", str(self.log_file),
                                 "-o", f"-p {self.s.pg_port} -k {sock}"]),
            check=True, stdout=subprocess.DEVNULL,
        )

    def ready(self) -> bool:
        return subprocess.run(
            [str(self.bindir() / "pg_isready"), "-q", "-h", self.s.pg_host, "-p", str(self.s.pg_port)]
        ).returncode == 0

    def stop(self) -> None:
        if self.pid() is None:
            return
        subprocess.run(
            self.as_system_user([str(self.bindir() / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data)]),
            check=True, stdout=subprocess.DEVNULL,
        )
