"""Example strategies: ``batchjobs --app examples.shout`` loads them from the repository root."""
