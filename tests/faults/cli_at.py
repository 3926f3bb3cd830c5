"""Run ``pec-renewal`` with this process's clock moved to ``PEC_RENEWAL_TEST_CLOCK`` (ISO datetime).

``python -m tests.faults.cli_at run-daily --date 2027-04-15``: the fault tests run the command
"later" without waiting (a claimed outbox batch's lease has run out, say); time-machine moves
the wall clock, which keeps ticking from there.  Without the variable it is the plain command.
"""

from __future__ import annotations

import os
from datetime import datetime


def main() -> None:
    clock = os.environ.get("PEC_RENEWAL_TEST_CLOCK")
    if clock:
        import time_machine

        time_machine.travel(datetime.fromisoformat(clock), tick=True).start()
    # Imported once the clock has moved, so that nothing of ours has read the real time first.
    from worker.cli.main import main as cli_main

    cli_main(prog_name="pec-renewal")


if __name__ == "__main__":
    main()
