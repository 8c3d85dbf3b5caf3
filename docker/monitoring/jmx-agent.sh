#!/bin/bash
# Prints the JVM option that starts the JMX exporter agent in a container, as ops/services.py's jmx_agent does
# natively: the repo's rules (monitoring/jmx/RULES.yml, mounted read-only) plus the scrapers' login (`prometheus`,
# METRICS_PASSWORD), served on PORT on the container's interfaces (natively 127.0.0.1). The login goes into a file
# only the container's user reads; natively it is a PBKDF2 hash, which these images have no tool to compute.
#   KAFKA_OPTS="$(bash jmx-agent.sh kafka 9404)"
set -euo pipefail
rules=$1
port=$2
# Overridable only so that tests/test_compose.py can run this outside the images.
rules_dir=${JMX_RULES_DIR:-/etc/crypto/jmx}
out=${JMX_CONFIG_DIR:-/tmp}/$rules-jmx.yml
jar=/opt/jmx/jmx_prometheus_javaagent.jar
umask 077
{
  cat "$rules_dir/$rules.yml"
  # Single-quoted: the settings allow no quote in a password.
  printf "\n# Added by docker/monitoring/jmx-agent.sh at start: the scrapers' login.\n"
  printf "httpServer:\n  authentication:\n    basic:\n      username: prometheus\n      password: '%s'\n" \
    "$METRICS_PASSWORD"
} > "$out"
printf -- '-javaagent:%s=%s:%s\n' "$jar" "$port" "$out"
