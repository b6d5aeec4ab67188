"""The validation toolkit's live checkers: fence order, deadlocks and races.

Off unless the daemon runs with `--check` (the test fixtures always turn it on). The
device calls the hooks below only through `active`, so a daemon without checks pays
one attribute test per event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emudev.check.checker import Checker

active: Checker | None = None


def enable() -> Checker:
    """Turn the checkers on for this process (idempotent)."""
    global active
    from emudev.check.checker import Checker

    if active is None:
        active = Checker()
    return active
