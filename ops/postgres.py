"""PostgreSQL in the native stack: a cluster of its own in var/postgres, from Debian's server binaries.

PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as, the `postgres` system user.
Local (socket) connections are trusted only through var/run/pg, which only that user reaches; TCP on
127.0.0.1 asks for a password (scram-sha-256).

That user must reach the cluster's folders. In a checkout it cannot enter (cloned under /root, mode 0700) the
cluster and its socket live in a folder of its own, ~postgres/cryptopipe-<hash of var/>/{data,run}, with
var/postgres and var/run/pg linking there: whatever looks under var/ finds them as always, and the link
records where the cluster is. The server's log reaches logs/ through a file descriptor root opens.
"""

from __future__ import annotations

import hashlib
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

    def reachable(self) -> bool:
        """The server's user can enter var/run/pg's parent, hence var/ and every folder above it."""
        user = self.system_user()
        if user is None:
            return True
        return subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(self.run_dir)]).returncode == 0

    def outside_home(self) -> Path:
        """The cluster's folder when the server's user cannot reach var/: one per var/ folder, in that user's home."""
        home = Path(pwd.getpwnam(self.system_user()).pw_dir)
        if not home.is_dir():
            raise StackError(f"The postgres system user's home {home} does not exist, and this checkout is closed "
                             "to that user: run `make setup`, or clone the checkout where other users can enter.")
        return home / ("cryptopipe-" + hashlib.sha256(str(self.s.var_dir.resolve()).encode()).hexdigest()[:12])

    def place(self) -> None:
        """var/postgres and var/run/pg as folders the server can use: here, or links to outside_home()."""
        sock = self.run_dir / "pg"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.data.is_symlink():
            outside = Path(os.readlink(self.data)).parent
            if not outside.is_dir():
                raise StackError(f"{self.data} links to {os.readlink(self.data)}, which is gone: remove the link "
                                 "to start a new cluster.")
        elif (self.data / "PG_VERSION").exists() or self.reachable():
            sock.mkdir(exist_ok=True)
            return
        else:
            outside = self.outside_home()
            if (outside / "data" / "PG_VERSION").exists():
                raise StackError(f"{outside} holds this checkout's cluster from before, but {self.data} does not "
                                 f"link to it. Nothing was deleted: link it back (ln -s {outside / 'data'} "
                                 f"{self.data}) to keep it, or remove {outside} to start afresh.")
            for folder in (outside, outside / "data", outside / "run"):
                folder.mkdir(mode=0o700, exist_ok=True)
                self.give_to_system_user(folder)
            link(self.data, outside / "data")
        link(sock, outside / "run")

    def start(self) -> None:
        bindir = self.bindir()
        self.place()
        # The server's user gets the real paths: it may not be able to pass through var/ to follow the links.
        sock, data = (self.run_dir / "pg").resolve(), self.data.resolve()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        rotate_at_start(self.log_file, self.s.log_max_bytes, self.s.log_backups)
        self.give_to_system_user(sock)
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            data.chmod(0o700)
            self.give_to_system_user(data)
            subprocess.run(
                self.as_system_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                     "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"]),
                check=True, stdout=subprocess.DEVNULL,
            )
            with open(data / "postgresql.conf", "a") as conf:
                conf.write("\n" + (CONFIG_DIR / "postgresql.conf").read_text())
        # No -l: the server inherits the log this process opens, so its user need not reach logs/.
        with open(self.log_file, "ab") as log:
            subprocess.run(
                self.as_system_user([str(bindir / "pg_ctl"), "start", "-s", "-w", "-t",
                                     str(int(self.s.start_timeout_s)), "-D", str(data),
                                     "-o", f"-p {self.s.pg_port} -k {sock}"]),
                check=True, stdout=log,
            )

    def ready(self) -> bool:
        return subprocess.run(
            [str(self.bindir() / "pg_isready"), "-q", "-h", self.s.pg_host, "-p", str(self.s.pg_port)]
        ).returncode == 0

    def stop(self) -> None:
        if self.pid() is None:
            return
        subprocess.run(
            self.as_system_user([str(self.bindir() / "pg_ctl"), "stop", "-m", "fast", "-w",
                                 "-D", str(self.data.resolve())]),
            check=True, stdout=subprocess.DEVNULL,
        )


def link(path: Path, target: Path) -> None:
    """Make `path` a symlink to `target`, in place of an empty folder an earlier failed start left there."""
    if path.is_symlink() and path.resolve() == target.resolve():
        return
    try:
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            path.rmdir()
    except OSError as err:
        raise StackError(f"{path} must become a link to {target}, but it holds files ({err.strerror}): "
                         "move it away.") from None
    path.symlink_to(target)
