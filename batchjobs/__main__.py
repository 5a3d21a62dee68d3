"""``python -m batchjobs``: the ``batchjobs`` command, run by this interpreter."""

from .cli import main

main()
