"""Redis users (ACL, Redis 7.0 syntax): who may touch which keys and channels with which commands.

Redis reads the users from the file `write_acl_file` writes, rewritten from the settings at every start, so a
password changed in .env takes effect at the next `make up`. Passwords go in as SHA-256 hashes only.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from cryptopipe.settings import Settings, load_settings, user_field

# Logging in and the connection's own settings (AUTH, HELLO, PING, SELECT, CLIENT SETNAME...), without the
# ones that act on other clients (CLIENT KILL, CLIENT LIST, CLIENT PAUSE).
CONNECTION = "+@connection -@dangerous"
# redis-py's register_script: EVALSHA, and on a miss SCRIPT EXISTS / SCRIPT LOAD. A script runs with its
# caller's rights, so the commands inside the scripts are granted one by one too.
SCRIPTS = "+evalsha +script|exists +script|load"


def rules(s: Settings) -> dict[str, str]:
    """User (a key of Settings.REDIS_USERS) -> its ACL rules: ~keys, &channels, +commands."""
    return {
        "admin": "~* &* +@all",
        # functions/redis_sink: the price, candle and history of each symbol, and the price channel.
        "redis-sink": f"~price:* ~candle:* ~prices:* &prices:* {CONNECTION} {SCRIPTS} +hget +hset +lpush +ltrim "
                      "+publish",
        # functions/alert_notifier/memory.py: sent markers and cooldowns under its prefix.
        "alert-notifier": f"~{s.alert_redis_prefix}* {CONNECTION} {SCRIPTS} +exists +get +set +del",
        # make status, make demo, the chaos check, price subscribers: read keys and the price channel. The
        # -@dangerous in CONNECTION, last, also takes KEYS (it blocks the server) out of @read.
        "reader": f"%R~* &prices:* +@read +subscribe +psubscribe +unsubscribe +punsubscribe {CONNECTION}",
        # The Redis exporter: INFO, PING and its connection only; no key, no channel, no CONFIG.
        "monitor": "resetkeys resetchannels -@all +auth +hello +ping +info +client|setname +select",
    }


def acl_lines(s: Settings) -> list[str]:
    # Without a line of its own, the default user would be on with no password and every command. Off, and with no
    # password, no client can be it; but Redis 7.0 replays the append-only file at start as a client of the default
    # user, and refuses whatever that user may not run: with -@all every script's writes (MULTI/EXEC in the file)
    # would be dropped at each restart. So it keeps every right, for that replay only.
    lines = ["user default off resetpass ~* &* +@all"]
    for user, rule in rules(s).items():
        password = getattr(s, f"redis_{user_field(user)}_password").get_secret_value()
        digest = hashlib.sha256(password.encode()).hexdigest()
        lines.append(f"user {s.REDIS_USERS[user]} on resetpass #{digest} {rule}")
    return lines


def write_acl_file(s: Settings, path: Path) -> None:
    """The ACL file for redis-server --aclfile, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so the hashes are never readable by others, not even for a moment;
    # the rename swaps it in whole.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in acl_lines(s)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    """`python -m ops.redis_acl PATH`: docker-compose's init writes the file its Redis reads."""
    if len(argv) != 2:
        print("usage: python -m ops.redis_acl PATH", file=sys.stderr)
        return 2
    write_acl_file(load_settings(), Path(argv[1]))
    print(f"  redis      {len(Settings.REDIS_USERS)} users written to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
