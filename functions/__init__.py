"""The pipeline's functions: one folder each."""
