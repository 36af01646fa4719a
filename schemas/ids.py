"""Public identifiers of tracks: the same string in the CLI, JSON, Parquet, SQL queries and thumbnail names.

A face track is `V-N`, a person track `V-pN`: V is the video's id in the index, N the track's number within
the video's live results. Both are stable while a video's results are (re-indexing with other models or
settings numbers its tracks anew).
"""

from __future__ import annotations

import re

from schemas.errors import InputError

_FACE = re.compile(r"^(\d+)-(\d+)$")
_PERSON = re.compile(r"^(\d+)-p(\d+)$")


class TrackIdError(InputError):
    """A string that is not a track identifier."""


def face_track_id(video_id: int, index: int) -> str:
    return f"{video_id}-{index}"


def person_track_id(video_id: int, index: int) -> str:
    return f"{video_id}-p{index}"


def parse_face_track_id(text: str) -> tuple[int, int]:
    """(video id, track number) of a face track identifier such as `12-3`."""
    m = _FACE.match(text.strip())
    if m is None:
        raise TrackIdError(f"{text!r} is not a face track id",
                           hint="face track ids look like 12-3 (video 12, track 3), as `vidx search` prints them")
    return int(m.group(1)), int(m.group(2))


def parse_person_track_id(text: str) -> tuple[int, int]:
    """(video id, track number) of a person track identifier such as `12-p3`."""
    m = _PERSON.match(text.strip())
    if m is None:
        raise TrackIdError(f"{text!r} is not a person track id",
                           hint="person track ids look like 12-p3 (video 12, person track 3)")
    return int(m.group(1)), int(m.group(2))
