"""Arrow schemas of the Parquet outputs: `faces`, `persons`, `tracks` and `person_tracks`, one part file per
video per run.

Every row carries the video's path (dictionary-encoded, so it costs next to nothing) and id, and every
part carries the schema version, the pipeline and model versions, the run key and the video in its file
metadata, so a part read on its own (pandas, polars, DuckDB) says what produced it. Tracks are named by
their public identifiers (schemas.ids): face tracks `V-N`, person tracks `V-pN`.
"""

from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = "2"
"""2: `persons` has no keypoints column (the person detector is YOLOv3-tiny, boxes only); every row names its
video (`video`) and tracks by their public ids (`track_id`, `person_track_id`); `person_tracks` is new."""
EMBEDDING_DIM = 128

_video_cols = [
    pa.field("video", pa.string(), nullable=False, metadata={"doc": "the video file's path, as indexed"}),
    pa.field("video_id", pa.int64(), nullable=False, metadata={"doc": "the video's id in the SQL index"}),
    pa.field("run_key", pa.string(), nullable=False),
]
_face_track = pa.field("track_id", pa.string(), nullable=True,
                       metadata={"doc": "public face track id, video id - track number (12-3)"})
_person_track = pa.field("person_track_id", pa.string(), nullable=True,
                         metadata={"doc": "public person track id, video id - p track number (12-p3)"})
_box = pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False,
                metadata={"doc": "x0, y0, x1, y1 in pixels of the displayed (rotation-corrected) frame"})

FACES = pa.schema([
    *_video_cols,
    pa.field("pts_s", pa.float64(), nullable=False, metadata={"doc": "seconds from the stream start, from PTS"}),
    pa.field("frame_index", pa.int64(), nullable=False),
    _box,
    pa.field("score", pa.float32(), nullable=False),
    pa.field("keypoints", pa.list_(pa.float32(), 12), nullable=False,
             metadata={"doc": "x, y of right eye, left eye, nose tip, mouth, right ear, left ear"}),
    pa.field("size_px", pa.float32(), nullable=False),
    pa.field("sharpness", pa.float32(), nullable=True, metadata={"doc": "Laplacian variance of the aligned chip"}),
    pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_DIM), nullable=True,
             metadata={"doc": "raw dlib descriptor; null when the face was too small or blurred to embed"}),
    _face_track,
])

PERSONS = pa.schema([
    *_video_cols,
    pa.field("pts_s", pa.float64(), nullable=False),
    pa.field("frame_index", pa.int64(), nullable=False),
    _box,
    pa.field("score", pa.float32(), nullable=False),
    _person_track,
])

TRACKS = pa.schema([
    *_video_cols,
    _face_track.with_nullable(False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("n_faces", pa.int32(), nullable=False),
    pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_DIM), nullable=False,
             metadata={"doc": "mean of the track's face descriptors"}),
    pa.field("best_pts_s", pa.float64(), nullable=False),
    pa.field("best_bbox", pa.list_(pa.float32(), 4), nullable=False),
    pa.field("quality", pa.float32(), nullable=False),
    pa.field("thumbnail", pa.string(), nullable=True, metadata={"doc": "JPEG path relative to the output root"}),
    pa.field("person_track_id", pa.string(), nullable=True,
             metadata={"doc": "the person track most of this track's faces were inside"}),
])

PERSON_TRACKS = pa.schema([
    *_video_cols,
    _person_track.with_nullable(False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("n_detections", pa.int32(), nullable=False),
    pa.field("best_pts_s", pa.float64(), nullable=False),
    pa.field("best_bbox", pa.list_(pa.float32(), 4), nullable=False),
    pa.field("thumbnail", pa.string(), nullable=True, metadata={"doc": "JPEG path relative to the output root"}),
    pa.field("face_track_ids", pa.list_(pa.string()), nullable=False,
             metadata={"doc": "face tracks seen on this person"}),
])

TABLES: dict[str, pa.Schema] = {"faces": FACES, "persons": PERSONS, "tracks": TRACKS,
                                "person_tracks": PERSON_TRACKS}


def file_metadata(*, pipeline_version: str, model_versions: dict[str, str], run_key: str,
                  video_path: str, video_fingerprint: str, params: dict[str, object]) -> dict[bytes, bytes]:
    """Key-value metadata stored in each Parquet footer."""
    values = {
        "vidx.schema_version": SCHEMA_VERSION,
        "vidx.pipeline_version": pipeline_version,
        "vidx.models": json.dumps(model_versions, sort_keys=True),
        "vidx.run_key": run_key,
        "vidx.video_path": video_path,
        "vidx.video_fingerprint": video_fingerprint,
        "vidx.params": json.dumps(params, sort_keys=True),
    }
    return {k.encode(): v.encode() for k, v in values.items()}
