"""Errors of one video: recorded for that video, never fatal to a job."""

from __future__ import annotations

from schemas.errors import VidxError


class VideoError(VidxError):
    """This video cannot be indexed, for a reason of its own (corrupt, unsupported, empty...).

    Retrying does not help; the job marks the video failed with this message and goes on.
    """


class DecodeTimeout(VideoError):
    """Decoding made no progress for too long (a hung decoder)."""
