"""Shared pieces of the crypto pipeline: settings, topic declarations, the native stack and the database."""
