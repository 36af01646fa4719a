"""Errors of the engines layer."""

from __future__ import annotations

from schemas.errors import InputError, VidxError


class ModelError(VidxError):
    """A model file is missing, corrupt, cannot be fetched or cannot be converted."""


class RuntimeUnavailable(VidxError):
    """The requested runtime or device is not available on this machine."""


class ImageError(InputError):
    """An image given to vidx cannot be used (not an image, too large, no face...)."""
