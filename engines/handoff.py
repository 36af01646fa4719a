"""Boxes found in one frame, handed to the later frames of its video that depend on them."""

from __future__ import annotations

import threading

import numpy as np

WAIT_S = 600.0
"""Longest a frame waits for the boxes of an earlier frame (seconds of one step's models at most)."""


class BoxHandoff:
    """The boxes (K x 4, frame pixels) found in one frame, handed to the frames after it that depend on them.
    Those frames may be analysed in another step, in another thread, before or after this one's step ends: they
    get the same boxes whichever thread gets there first, so results do not depend on timing."""

    def __init__(self, what: str):
        self.what = what
        self.boxes = np.zeros((0, 4), np.float32)
        self._ready = threading.Event()

    def found(self, boxes: np.ndarray) -> None:
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self._ready.set()

    def release(self) -> None:
        """Frees those waiting, with no boxes if none were found (the step that was to find them failed)."""
        self._ready.set()

    def wait(self) -> np.ndarray:
        if not self._ready.wait(WAIT_S):  # the step that finds them always finds or releases: this is a bug
            raise RuntimeError(f"the {self.what} of an earlier step did not come in {WAIT_S:.0f} s")
        return self.boxes
