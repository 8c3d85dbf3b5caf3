#!/bin/bash
# The native worker config plus what differs in a container (bootstrap address, REST listener, plugin path) and the
# logins ops/services.py's Connect.start adds natively: the worker and the producers, consumers and admin clients
# it makes for the connectors log in to Kafka as kafka-connect (SCRAM), the REST API asks for HTTP basic auth, and the
# JMX exporter agent serves the worker's metrics behind the scrapers' login.
set -euo pipefail
# Overridable only so that tests/test_compose.py can run this script outside the image.
etc=${CONNECT_ETC_DIR:-/etc/crypto}
run=${CONNECT_RUN_DIR:-/tmp}
kafka_home=${CONNECT_KAFKA_HOME:-/opt/kafka}
# Every file written here holds a password: owner-only.
umask 077
conf=$run/connect.properties
users=$run/connect-rest-users.properties
jaas=$run/connect-rest.jaas
login="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"kafka-connect\""
login+=" password=\"${KAFKA_CONNECT_PASSWORD}\";"
cp "$etc/connect-distributed.properties" "$conf"
cat >> "$conf" <<PROPS
bootstrap.servers=${CONNECT_BOOTSTRAP_SERVERS}
listeners=http://0.0.0.0:8083
rest.advertised.host.name=${CONNECT_ADVERTISED_HOST:-connect}
rest.advertised.port=8083
plugin.path=/opt/kafka/plugins
PROPS
for prefix in "" producer. consumer. admin.; do
  printf '%ssecurity.protocol=SASL_PLAINTEXT\n%ssasl.mechanism=SCRAM-SHA-512\n%ssasl.jaas.config=%s\n' \
    "$prefix" "$prefix" "$prefix" "$login" >> "$conf"
done
# BasicAuthSecurityRestExtension reads its users from the file its JAAS login module names.
printf '%s: %s\n' "$CONNECT_REST_USER" "$CONNECT_REST_PASSWORD" > "$users"
module=org.apache.kafka.connect.rest.basic.auth.extension.PropertyFileLoginModule
printf 'KafkaConnect {\n  %s required file="%s";\n};\n' "$module" "$users" > "$jaas"
# Its metrics: the JMX exporter agent (monitoring/jmx/connect.yml) behind the scrapers' login, on CONNECT_METRICS_PORT.
agent=$(JMX_CONFIG_DIR=$run bash "$etc/jmx-agent.sh" connect "$CONNECT_METRICS_PORT")
# The files hold them now; the worker's environment need not.
unset KAFKA_CONNECT_PASSWORD CONNECT_REST_PASSWORD METRICS_PASSWORD
export KAFKA_OPTS="-Djava.security.auth.login.config=$jaas $agent ${KAFKA_OPTS:-}"
export KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=$etc/log4j2.properties"
exec "$kafka_home/bin/connect-distributed.sh" "$conf"
