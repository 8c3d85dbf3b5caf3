#!/bin/bash
# The native worker config plus what differs in a container: bootstrap address, REST listener, plugin path.
set -euo pipefail
conf=/tmp/connect.properties
cp /etc/crypto/connect-distributed.properties "$conf"
cat >> "$conf" <<PROPS
bootstrap.servers=${CONNECT_BOOTSTRAP_SERVERS}
listeners=http://0.0.0.0:8083
rest.advertised.host.name=${CONNECT_ADVERTISED_HOST:-connect}
rest.advertised.port=8083
plugin.path=/opt/kafka/plugins
PROPS
export KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=/etc/crypto/log4j2.properties"
exec /opt/kafka/bin/connect-distributed.sh "$conf"
