"""Keep full garbage collections short once the model is loaded.

With TensorFlow and a SavedModel loaded, about 366,000 long-lived Python objects
sit on the heap. A full (generation 2) collection walks all of them: 180-220 ms
on the 2-core benchmark machine, while the event loop and the decoding threads stand
still and every request in flight waits. It happened every few seconds under
load. Frozen after start-up (``gc.freeze``), those objects are skipped, and a full
collection takes 2-17 ms.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect what loading left behind, then freeze every object still alive."""
    gc.collect()
    gc.freeze()


def thaw() -> None:
    """Hand frozen objects back to the collector, so that a replaced model can be freed."""
    gc.unfreeze()
