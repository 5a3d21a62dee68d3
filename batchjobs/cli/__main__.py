"""``python -m batchjobs.cli``: the ``batchjobs`` console script."""

from . import main

main()
