"""Kafka `crypto.alerts` -> a Slack-compatible webhook and the log, each alert once, with a cooldown."""
