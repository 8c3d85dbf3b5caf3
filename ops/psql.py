"""`make psql [ROLE=...]`: a psql shell on the crypto database as one of the PostgreSQL roles (reader by default).

    python -m ops.psql [ROLE] [psql options...]

The password comes from the settings and reaches psql through PGPASSWORD, never on its command line, where
any user of the machine could read it (ps). Works on standard input too: `echo 'SELECT 1' | make psql`.
"""

from __future__ import annotations

import os
import shutil
import sys

from cryptopipe.settings import Settings, load_settings
from ops.postgres import Postgres
from ops.process import StackError

DEFAULT_ROLE = "reader"


def psql_binary(settings: Settings) -> str:
    """The psql next to the server binaries the stack runs, else the one on PATH."""
    try:
        candidate = Postgres(settings).bindir() / "psql"
        if candidate.exists():
            return str(candidate)
    except StackError:
        pass
    found = shutil.which("psql")
    if found is None:
        raise SystemExit("error: psql not found: run `make setup`, or install the PostgreSQL client "
                         "(postgresql-client).")
    return found


def main(argv: list[str]) -> None:
    role = argv[1] if len(argv) > 1 else DEFAULT_ROLE
    if role not in Settings.PG_ROLES:
        raise SystemExit(f"error: unknown role {role!r}: ROLE must be one of {', '.join(Settings.PG_ROLES)}")
    settings = load_settings()
    params = settings.pg_params(role)
    command = [psql_binary(settings), "-h", str(params["host"]), "-p", str(params["port"]), "-U", str(params["user"]),
               "-d", str(params["dbname"]), "-v", "ON_ERROR_STOP=1", *argv[2:]]
    # psql takes this process's place: its exit status and standard input are the command's own.
    os.execvpe(command[0], command, {**os.environ, "PGPASSWORD": str(params["password"])})


if __name__ == "__main__":
    main(sys.argv)
