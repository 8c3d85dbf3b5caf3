# The crypto pipeline. `make` lists the targets; README.md explains them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: help setup up down status dlq dlq-redrive demo run stop test bench source replay redis-sink alert-notifier deploy-ksql deploy-connectors deploy-flink compose-up compose-down start chaos psql

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-20s\033[0m %s\n", $$1, $$2}'

setup: ## install everything: Debian packages (as root), the venv, Kafka/Connect jars, the JDBC plugin, .env
	@bash stack/setup.sh

up: setup ## start the native stack (PostgreSQL, Redis, Kafka, Connect, Flink and its job, Airflow), create topics and tables
	@$(PY) -m ops.stack up

down: ## stop the functions and exactly what `make up` started
	@if [ -x $(PY) ]; then $(PY) -m ops.functions_ctl stop && $(PY) -m ops.stack down; \
	else echo "  nothing to stop (no .venv)"; fi

status: ## health check: services, functions, topics and DLQ depth, consumer lag, connectors, tables, freshness, Airflow
	@$(PY) -m ops.status

# TOPIC, N and REASON reach the command as environment variables (make exports command-line variables), never
# pasted into the shell line, so no value can break its quoting; ops/dead_letters.py checks them.
dlq: ## dead-letter topics: depth and reasons counted; TOPIC=<dead-letter topic> [N=20] shows its newest records and headers
	@if [ -n "$$TOPIC" ]; then $(PY) -m ops.dead_letters show --topic "$$TOPIC" --count "$${N:-20}"; \
	else $(PY) -m ops.dead_letters list; fi

dlq-redrive: ## send TOPIC's dead letters back to their original topic once the cause is fixed, each exactly once [REASON="<reason as make dlq shows it>"]
	@$(PY) -m ops.dead_letters redrive --topic "$$TOPIC" $${REASON:+--reason "$$REASON"}

psql: ## a psql shell on the crypto database as ROLE (reader by default; owner, writer, airflow, retention, backfill, monitor), password from .env
	@$(PY) -m ops.psql $(ROLE)

demo: up ## the whole pipeline on the bundled real tapes (or TAPE=<dir>), checked end to end
	@TAPE="$(TAPE)" $(PY) -m ops.demo

run: up ## live: the pipeline against Binance (BINANCE_BASE_URL, BINANCE_SYMBOLS), functions in the background, scheduled DAGs unpaused
	@$(PY) -m ops.connectors
	@$(PY) -m ops.functions_ctl start
	@$(PY) -m ops.dag_schedule on

start: ## start functions in the background: all, or FN="redis-sink source" (source, redis-sink, alert-notifier, replay)
	@$(PY) -m ops.functions_ctl start $(FN)

stop: ## stop the functions in the background: all, or FN="..." as for start; without FN, pause the DAGs make run unpaused
	@$(PY) -m ops.functions_ctl stop $(FN)
	@if [ -z "$(FN)" ]; then $(PY) -m ops.dag_schedule off; fi

test: up ## set up, start the stack and run every test against it (and list the ten slowest)
	@$(PY) -m pytest --durations=10 $(PYTEST_ARGS)

bench: up ## measure throughput and latency against bare baselines; writes bench-results.json
	@$(PY) -m bench 2>>logs/bench.log

chaos: up ## faults against the running pipeline (kills, outages, bad records), then every invariant; writes chaos-results.json (ARGS="--seed N --minutes M")
	@$(PY) -m chaos $(ARGS) 2>>logs/chaos.log

source: ## run the Binance source in the foreground (BINANCE_BASE_URL, BINANCE_SYMBOLS in .env)
	@.venv/bin/binance-source

redis-sink: ## run the Redis sink function in the foreground
	@.venv/bin/redis-sink

alert-notifier: ## run the alert notification function (webhook, or the log only) in the foreground
	@.venv/bin/alert-notifier

deploy-connectors: ## create/update the JDBC sink connectors and wait for RUNNING (ARGS=--restart-failed)
	@$(PY) -m ops.connectors $(ARGS)

deploy-flink: ## start the stream job (flink/*.sql) on Flink unless it runs, from its newest checkpoint; show the jobs
	@$(PY) -m ops.flink_deploy $(ARGS)

deploy-ksql: ## apply ksql/*.sql to ksqlDB (docker-compose); says so and succeeds when none is reachable
	@$(PY) -m ops.ksql_deploy

compose-up: ## docker-compose: build and start everything (ksqlDB, Kafka UI too), then deploy connectors and ksql
	@docker compose version >/dev/null 2>&1 || { echo "error: \`docker compose\` not found: install Docker Engine with the Compose plugin, or use the native stack (make demo)." >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers (is dockerd running, and may you use it?); or use the native stack (make demo)." >&2; exit 1; }
	@[ -f .env ] || { echo "error: no .env: cp .env.example .env and replace every change-me (make setup does it with generated secrets)." >&2; exit 1; }
	docker compose up -d --build --wait
	docker compose run --rm --no-deps init python -m ops.connectors
	docker compose run --rm --no-deps -e KSQLDB_HOST=ksqldb-server init python -m ops.ksql_deploy

compose-down: ## docker-compose: stop the containers (volumes kept; `docker compose down -v` deletes them)
	@docker compose version >/dev/null 2>&1 || { echo "error: \`docker compose\` not found: install Docker Engine with the Compose plugin." >&2; exit 1; }
	docker compose down

replay: ## serve the bundled real Binance tapes as a local Binance API on 127.0.0.1:8900
	@.venv/bin/replay-server
