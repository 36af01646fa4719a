"""Loading still images safely: photos given to `vidx search` and `vidx person add`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engines.errors import ImageError

MAX_IMAGE_PIXELS = 50_000_000
"""Larger images are refused before they are decoded (a decompression bomb costs memory, not bytes)."""
MAX_IMAGE_BYTES = 100 * 1024 * 1024


def load_rgb(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An HxWx3 uint8 RGB array, EXIF orientation applied; ImageError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("no such image file", path=path)
    size = path.stat().st_size
    if size == 0:
        raise ImageError("the file is empty", path=path)
    if size > MAX_IMAGE_BYTES:
        raise ImageError(f"the file is {size / 1e6:.0f} MB; images over {MAX_IMAGE_BYTES // 2**20} MiB are refused",
                         path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(f"the image is {w}x{h} pixels, over the limit of {max_pixels:,}", path=path,
                                     hint="scale it down first")
                upright = ImageOps.exif_transpose(img)
                return np.asarray(upright.convert("RGB"))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"the image's pixel count is over the limit of {max_pixels:,} ({exc})", path=path,
                         hint="scale it down first") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a readable image ({exc.__class__.__name__})", path=path) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image is corrupt or truncated: {exc}", path=path) from exc
