"""Arrow schemas of the Parquet outputs: `faces`, `persons` and `tracks`, one part file per video per run.

Every part carries the schema version, the pipeline and model versions, the run key and the video
in its file metadata, so a part read on its own (pandas, polars, DuckDB) says what produced it.
"""

from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = "2"
"""2: `persons` has no keypoints column (the person detector is YOLOv3-tiny, boxes only)."""
EMBEDDING_DIM = 128

_video_cols = [
    pa.field("video_id", pa.int64(), nullable=False),
    pa.field("run_key", pa.string(), nullable=False),
]
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
    pa.field("track_id", pa.int64(), nullable=True, metadata={"doc": "track number within the video and run"}),
])

PERSONS = pa.schema([
    *_video_cols,
    pa.field("pts_s", pa.float64(), nullable=False),
    pa.field("frame_index", pa.int64(), nullable=False),
    _box,
    pa.field("score", pa.float32(), nullable=False),
])

TRACKS = pa.schema([
    *_video_cols,
    pa.field("track_id", pa.int64(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("n_faces", pa.int32(), nullable=False),
    pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_DIM), nullable=False,
             metadata={"doc": "mean of the track's face descriptors"}),
    pa.field("best_pts_s", pa.float64(), nullable=False),
    pa.field("best_bbox", pa.list_(pa.float32(), 4), nullable=False),
    pa.field("quality", pa.float32(), nullable=False),
    pa.field("thumbnail", pa.string(), nullable=True, metadata={"doc": "JPEG path relative to the output root"}),
])

TABLES: dict[str, pa.Schema] = {"faces": FACES, "persons": PERSONS, "tracks": TRACKS}


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
