"""Named points where a fault test can kill the validator at the worst moment.

``SLMNET_CRASH_AT=NAME`` in the environment makes the process SIGKILL itself the first time
it reaches ``crashpoint(NAME)``: no cleanup, no flush, as a power cut or the OOM killer
would. Unset (always, outside tests) a crash point costs one dictionary lookup.

    organic-taken     organic verdicts marked as taken by a round not yet stored
    round-stored      a round committed to SQLite, not yet in rounds.jsonl
    weights-accepted  the chain accepted weights the state does not record yet
"""

from __future__ import annotations

import os
import signal

ENV = "SLMNET_CRASH_AT"
POINTS = ("organic-taken", "round-stored", "weights-accepted")


def crashpoint(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
