"""The chaos run (`make chaos`): faults against the running pipeline, then every invariant against the tape."""
