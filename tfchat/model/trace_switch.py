"""A per-thread switch that is on while a `with` block traces under it.

The fast decode path (`tfchat.inference.slots`) traces its programs under
such switches so that a layer emits a CPU-specific form of the same
computation (`tfchat.model.matvec`, `tfchat.model.native_attention`); every
other trace, in any thread, sees them off.

Example:

>>> switch = TraceSwitch()
>>> with switch.on():
...     inside = bool(switch)
>>> inside, bool(switch)
(True, False)
"""

from __future__ import annotations

import contextlib
import threading


class TraceSwitch:
    """Truthy in the thread that is inside `with switch.on():` (nested blocks restore the outer state)."""

    def __init__(self):
        self._local = threading.local()

    def __bool__(self) -> bool:
        return getattr(self._local, "on", False)

    @contextlib.contextmanager
    def on(self):
        previous = bool(self)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = previous
