"""The shared core every function imports: settings, topics, record schemas, logging, the run skeleton."""
