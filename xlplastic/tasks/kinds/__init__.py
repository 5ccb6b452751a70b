"""One module per task kind, each building its `Task` (reader, features, head, loss, predictions, score).

Adding a task: a module here that builds a `Task` from the building blocks (formats, encoding, layers,
metrics), and its line in tasks/registry.py.
"""
