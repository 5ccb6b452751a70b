"""Downstream tasks: one `Task` per kind (registry.py, kinds/) with its reader, features, head and metrics."""
