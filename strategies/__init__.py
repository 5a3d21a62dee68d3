"""Built-in strategies, installed as ``batchjobs.strategies`` and registered
through the ``batchjobs.strategies`` entry-point group."""
