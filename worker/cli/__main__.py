"""``python -m worker.cli``: the ``pec-renewal`` command."""

from worker.cli.main import main

main()
