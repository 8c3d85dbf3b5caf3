#!/usr/bin/env bash
# make setup: install everything the native stack needs, idempotently.
# As root with apt-get (CI, a fresh machine) it installs missing Debian packages; elsewhere it names
# what is missing and how to get it, in one message. Then: the Python venv from requirements.lock,
# the Kafka/Connect jars and the Debezium JDBC plugin from Maven Central, and .env with fresh secrets.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# ---- system packages ---------------------------------------------------------------------------
missing=()
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
command -v java >/dev/null && [ "$(java_major)" -ge 17 ] || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql-15)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v runuser >/dev/null || missing+=(util-linux)
# Monitoring: Prometheus (promtool and the console templates with it), Alertmanager and the exporters; the
# stack runs them itself (ops/monitoring.py), so their packaged services stay off (policy-rc.d below).
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
command -v prometheus-node-exporter >/dev/null || missing+=(prometheus-node-exporter)
command -v prometheus-postgres-exporter >/dev/null || missing+=(prometheus-postgres-exporter)
command -v prometheus-redis-exporter >/dev/null || missing+=(prometheus-redis-exporter)
# nginx holds Flink's client certificate and asks people for a login in front of Flink's web UI (#25); the stack
# runs it itself, unprivileged, so its packaged service stays off too.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx)
# Headless Chromium takes the Airflow UI screenshot in the tests.
command -v chromium >/dev/null || missing+=(chromium)
"$PYTHON" -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null || missing+=(python3 python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    # Keep the packages' own services from starting: the stack runs its own PostgreSQL and Redis.
    policy_made=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_made=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ $policy_made = 1 ] && rm -f /usr/sbin/policy-rc.d
  else
    echo "error: missing ${missing[*]}. Install them (Debian: sudo apt-get install ${missing[*]}) and run make setup again." >&2
    exit 1
  fi
fi

# ---- Python ------------------------------------------------------------------------------------
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
want=$(stamp_of requirements.lock pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$want" ]; then
  say "Python venv (.venv) from requirements.lock"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > .venv/.stamp
else
  echo "    .venv is up to date"
fi

# ---- Kafka, Kafka Connect, the Debezium JDBC sink, Flink and the JMX exporter from Maven Central ----
want=$(stamp_of stack/java/pom.xml)
if [ "$(cat stack/lib/.stamp 2>/dev/null)" != "$want" ]; then
  say "Kafka, Kafka Connect, the Debezium JDBC sink, Flink and the JMX exporter agent (Maven Central)"
  rm -rf stack/lib
  for profile in broker connect jdbc-plugin flink metrics; do
    mvn -B -q -f stack/java/pom.xml -P "$profile" package
  done
  mkdir -p stack/lib/plugins
  tar xzf stack/lib/archives/debezium-connector-jdbc-*-plugin.tar.gz -C stack/lib/plugins
  echo "$want" > stack/lib/.stamp
else
  echo "    stack/lib is up to date"
fi

# ---- The Flink job's functions (flink/udf, Java) ------------------------------------------------
want=$(stamp_of flink/udf/pom.xml $(find flink/udf/src -name '*.java' | sort))
if [ "$(cat stack/lib/flink-udf/.stamp 2>/dev/null)" != "$want" ]; then
  say "the Flink job's functions (flink/udf)"
  rm -rf stack/lib/flink-udf
  mvn -B -q -f flink/udf/pom.xml package
  echo "$want" > stack/lib/flink-udf/.stamp
else
  echo "    stack/lib/flink-udf is up to date"
fi

# ---- .env with generated secrets ---------------------------------------------------------------
# A fresh .env from .env.example; an existing one only gains the secrets it lacks (added by a newer version).
.venv/bin/python - <<'PY'
import os, re, secrets
example = open(".env.example").read()
if not os.path.exists(".env"):
    print("\033[1m==> writing .env from .env.example with generated passwords\033[0m")
    # Created 0600 in the same call: never readable by others, not even for a moment.
    with os.fdopen(os.open(".env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as env:
        env.write(re.sub(r"=change-me\b", lambda _: "=" + secrets.token_urlsafe(18), example))
else:
    os.chmod(".env", 0o600)
    have = set(re.findall(r"^([A-Z_]+)=", open(".env").read(), flags=re.M))
    lacking = [k for k in re.findall(r"^([A-Z_]+)=change-me\b", example, flags=re.M) if k not in have]
    if lacking:
        print(f"\033[1m==> adding generated secrets to .env: {', '.join(lacking)}\033[0m")
        with open(".env", "a") as env:
            env.write("".join(f"{k}={secrets.token_urlsafe(18)}\n" for k in lacking))
PY
say "setup done"
