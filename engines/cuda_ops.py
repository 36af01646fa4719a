"""CUDA kernels (through CuPy) for the image work the models need when frames live on the GPU.

Every kernel reads frames through a table of device pointers, so one launch serves frames of
different videos and sizes (cross-video batches) without stacking or copying them first:

- `nv12_to_rgb`: a decoded NV12 surface (NVDEC's native output) to upright RGB, rotation included.
- `place_level`: the detector's input, one pyramid level of every frame of a batch in one launch:
  each frame (or the finer level before it) scaled to the level's size at the top left of its canvas,
  resampled with an antialiasing triangle filter (the same filter family as Pillow's BILINEAR on the
  CPU path), separably: a block filters the source rows under a window of the level along x into shared
  memory, then along y (levels that shrink a frame too much for that memory take a one-thread-per-pixel form).
- `warp_affine_frames`: aligned face chips for many faces of many frames in one launch, with a
  footprint that widens with the downscale factor (so a large face gives the same chip as a small one).
- `chip_sharpness`: each face chip's sharpness (variance of its grey image's Laplacian), one block per chip.

Kernels run on CuPy's current stream; callers order them against other streams with events.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.arrays import Array, require_cupy
from engines.streams import IN_FLIGHT

_SOURCE = r"""
typedef unsigned char u8;

// Triangle-filtered sample of an interleaved RGB image at source position (cx, cy) in pixel
// coordinates whose centres are integers; support >= 1 in each axis (1 = plain bilinear).
__device__ void sample_tri(const u8* img, int H, int W, long long row_stride, float cx, float cy,
                           float sup_x, float sup_y, float* rgb) {
    rgb[0] = rgb[1] = rgb[2] = 0.f;
    int x0 = (int)ceilf(cx - sup_x), x1 = (int)floorf(cx + sup_x);
    int y0 = (int)ceilf(cy - sup_y), y1 = (int)floorf(cy + sup_y);
    float wsum = 0.f;
    for (int y = y0; y <= y1; ++y) {
        float wy = 1.f - fabsf((float)y - cy) / sup_y;
        if (wy <= 0.f) continue;
        bool yin = (y >= 0 && y < H);
        for (int x = x0; x <= x1; ++x) {
            float wx = 1.f - fabsf((float)x - cx) / sup_x;
            if (wx <= 0.f) continue;
            float w = wx * wy;
            wsum += w;
            if (yin && x >= 0 && x < W) {   // outside the image counts as black (zero padding)
                const u8* p = img + (long long)y * row_stride + 3LL * x;
                rgb[0] += w * p[0]; rgb[1] += w * p[1]; rgb[2] += w * p[2];
            }
        }
    }
    if (wsum > 0.f) { rgb[0] /= wsum; rgb[1] /= wsum; rgb[2] /= wsum; }
}

__device__ u8 to_u8(float v) { return (u8)fminf(fmaxf(v + 0.5f, 0.f), 255.f); }

// One thread per pixel of a level_h x level_w window of every image: frame t scaled to level_w x level_h is
// written at the top left of out's image t; nothing else of out is touched. frames: device pointers;
// dims: [H, W, row stride in bytes] int32 per frame (a frame may be the picture of a larger canvas).
extern "C" __global__ void place_level(const unsigned long long* frames, const int* dims, int n_images,
                                       int lw, int lh, int out_h, int out_w, u8* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long per_image = (long long)lh * lw;
    if (i >= per_image * n_images) return;
    int t = (int)(i / per_image);
    int r = (int)(i % per_image);
    int ly = r / lw, lx = r % lw;
    if (lx >= out_w || ly >= out_h) return;
    int H = dims[3 * t], W = dims[3 * t + 1];
    float rx = (float)W / lw, ry = (float)H / lh;
    float cx = (lx + 0.5f) * rx - 0.5f, cy = (ly + 0.5f) * ry - 0.5f;
    float rgb[3];
    sample_tri((const u8*)frames[t], H, W, dims[3 * t + 2], cx, cy, fmaxf(rx, 1.f), fmaxf(ry, 1.f), rgb);
    u8* o = out + 3 * ((long long)t * out_h * out_w + (long long)ly * out_w + lx);
    o[0] = to_u8(rgb[0]); o[1] = to_u8(rgb[1]); o[2] = to_u8(rgb[2]);
}
// One thread per chip pixel. chip_meta: [frame_slot] int32; maps: 2x3 float32 per chip (chip -> frame).
extern "C" __global__ void warp_affine(const unsigned long long* frames, const int* dims, const int* chip_slot,
                                       const float* maps, int n_chips, int size, u8* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long per_chip = (long long)size * size;
    if (i >= per_chip * n_chips) return;
    int k = (int)(i / per_chip);
    int r = (int)(i % per_chip);
    float y = (float)(r / size), x = (float)(r % size);
    const float* m = maps + 6 * k;
    int slot = chip_slot[k];
    int H = dims[3 * slot], W = dims[3 * slot + 1];
    float sx = m[0] * x + m[1] * y + m[2];
    float sy = m[3] * x + m[4] * y + m[5];
    float scale = sqrtf(fabsf(m[0] * m[4] - m[1] * m[3]));
    float sup = fmaxf(scale, 1.f);
    float rgb[3];
    sample_tri((const u8*)frames[slot], H, W, dims[3 * slot + 2], sx, sy, sup, sup, rgb);
    u8* o = out + 3 * i;
    o[0] = to_u8(rgb[0]); o[1] = to_u8(rgb[1]); o[2] = to_u8(rgb[2]);
}

// One thread per output pixel: NV12 (Y plane, interleaved UV plane at half resolution) to RGB,
// rotated clockwise by rot (0, 90, 180, 270) so the output displays upright.
extern "C" __global__ void nv12_to_rgb(const u8* y_plane, const u8* uv_plane, int y_pitch, int uv_pitch,
                                       int H, int W, int rot, int bt709, int full_range, u8* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)H * W) return;
    int out_w = (rot == 90 || rot == 270) ? H : W;
    int oy = (int)(i / out_w), ox = (int)(i % out_w);
    int sx, sy;
    if (rot == 90)       { sx = oy;         sy = H - 1 - ox; }
    else if (rot == 180) { sx = W - 1 - ox; sy = H - 1 - oy; }
    else if (rot == 270) { sx = W - 1 - oy; sy = ox; }
    else                 { sx = ox;         sy = oy; }
    float Y = y_plane[(long long)sy * y_pitch + sx];
    const u8* uv = uv_plane + (long long)(sy >> 1) * uv_pitch + 2 * (sx >> 1);
    float U = uv[0] - 128.f, V = uv[1] - 128.f;
    float yk, ck;
    if (full_range) { yk = 1.f; ck = 1.f; } else { Y -= 16.f; yk = 255.f / 219.f; ck = 255.f / 224.f; }
    Y *= yk; U *= ck; V *= ck;
    float r, g, b;
    if (bt709) { r = Y + 1.5748f * V; g = Y - 0.1873f * U - 0.4681f * V; b = Y + 1.8556f * U; }
    else       { r = Y + 1.4020f * V; g = Y - 0.3441f * U - 0.7141f * V; b = Y + 1.7720f * U; }
    u8* o = out + 3 * i;
    o[0] = to_u8(r); o[1] = to_u8(g); o[2] = to_u8(b);
}

// place_level as a separable filter, one block of PLACE_TW x PLACE_BY threads per PLACE_TW x PLACE_TH window of
// one image's level (blockIdx.z: the image); the same weights, normalisation and zero padding as sample_tri (up
// to float rounding: reciprocals where it divides), whose 2-D weights and their sum are products of 1-D ones.
// Pass 1 filters along x, for the window's columns, every source row its output rows reach, into shared memory
// (max_rows x PLACE_TW x 3 floats, max_rows at least the rows any image of the launch needs); pass 2 filters those
// rows along y, each thread for PLACE_TH / PLACE_BY pixels of its column. About 2r(r + 1) taps per pixel when
// shrinking by r, against (2r)^2 for sample_tri.
extern "C" __global__ void place_level_tiled(const unsigned long long* frames, const int* dims, int lw, int lh,
                                             int out_h, int out_w, int max_rows, u8* out) {
    extern __shared__ float rows[];
    int t = blockIdx.z;
    int H = dims[3 * t], W = dims[3 * t + 1];
    long long row_stride = dims[3 * t + 2];
    const u8* img = (const u8*)frames[t];
    float rx = (float)W / lw, ry = (float)H / lh;
    float sx = fmaxf(rx, 1.f), sy = fmaxf(ry, 1.f);
    float inv_sx = 1.f / sx, inv_sy = 1.f / sy;
    int lx0 = blockIdx.x * PLACE_TW, ly0 = blockIdx.y * PLACE_TH;
    int y_first = (int)ceilf((ly0 + 0.5f) * ry - 0.5f - sy);
    int y_last = (int)floorf((ly0 + PLACE_TH - 0.5f) * ry - 0.5f + sy);
    int n_rows = min(y_last - y_first + 1, max_rows);
    for (int i = threadIdx.y * PLACE_TW + threadIdx.x; i < n_rows * PLACE_TW; i += PLACE_TW * PLACE_BY) {
        int y = y_first + i / PLACE_TW, lx = lx0 + i % PLACE_TW;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f;
        if (y >= 0 && y < H && lx < lw) {
            float cx = (lx + 0.5f) * rx - 0.5f, wsum = 0.f;
            const u8* row = img + (long long)y * row_stride;
            for (int x = (int)ceilf(cx - sx), x1 = (int)floorf(cx + sx); x <= x1; ++x) {
                float w = 1.f - fabsf((float)x - cx) * inv_sx;
                if (w <= 0.f) continue;
                wsum += w;
                if (x >= 0 && x < W) { const u8* p = row + 3 * x; a0 += w * p[0]; a1 += w * p[1]; a2 += w * p[2]; }
            }
            if (wsum > 0.f) { float k = 1.f / wsum; a0 *= k; a1 *= k; a2 *= k; }
        }
        float* s = rows + 3 * i;
        s[0] = a0; s[1] = a1; s[2] = a2;
    }
    __syncthreads();
    int lx = lx0 + threadIdx.x;
    if (lx >= lw || lx >= out_w) return;
    for (int ly = ly0 + threadIdx.y; ly < ly0 + PLACE_TH && ly < lh && ly < out_h; ly += PLACE_BY) {
        float cy = (ly + 0.5f) * ry - 0.5f, wsum = 0.f, a0 = 0.f, a1 = 0.f, a2 = 0.f;
        for (int y = (int)ceilf(cy - sy), y1 = (int)floorf(cy + sy); y <= y1; ++y) {
            float w = 1.f - fabsf((float)y - cy) * inv_sy;
            if (w <= 0.f) continue;
            wsum += w;
            int r = y - y_first;   // always within the window's rows (max_rows bounds them): a guard only
            if (r >= 0 && r < n_rows) {
                const float* s = rows + 3 * (r * PLACE_TW + threadIdx.x);
                a0 += w * s[0]; a1 += w * s[1]; a2 += w * s[2];
            }
        }
        if (wsum > 0.f) { float k = 1.f / wsum; a0 *= k; a1 *= k; a2 *= k; }
        u8* o = out + 3 * ((long long)t * out_h * out_w + (long long)ly * out_w + lx);
        o[0] = to_u8(a0); o[1] = to_u8(a1); o[2] = to_u8(a2);
    }
}

// One block of SHARPNESS_THREADS (defined at compile time) threads per size x size x 3 chip: out[k] = the
// variance (over the interior pixels) of the 4-neighbour Laplacian of chip k's grey image
// (0.299 R + 0.587 G + 0.114 B); sums in double.
extern "C" __global__ void chip_sharpness(const u8* chips, int size, float* out) {
    __shared__ double sums[SHARPNESS_THREADS], squares[SHARPNESS_THREADS];
    const u8* chip = chips + (long long)blockIdx.x * size * size * 3;
    int inner = size - 2;
    double s = 0.0, q = 0.0;
    for (int i = threadIdx.x; i < inner * inner; i += SHARPNESS_THREADS) {
        int y = i / inner + 1, x = i % inner + 1;
        float g[5];
        const int dy[5] = {0, 0, 0, -1, 1}, dx[5] = {0, -1, 1, 0, 0};
        for (int n = 0; n < 5; ++n) {
            const u8* p = chip + 3 * ((y + dy[n]) * size + x + dx[n]);
            g[n] = p[0] * 0.299f + p[1] * 0.587f + p[2] * 0.114f;
        }
        double lap = (double)(g[1] + g[2] + g[3] + g[4] - 4.f * g[0]);
        s += lap;
        q += lap * lap;
    }
    sums[threadIdx.x] = s;
    squares[threadIdx.x] = q;
    __syncthreads();
    for (int half = SHARPNESS_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            sums[threadIdx.x] += sums[threadIdx.x + half];
            squares[threadIdx.x] += squares[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        double n = (double)inner * inner, mean = sums[0] / n;
        out[blockIdx.x] = (float)fmax(squares[0] / n - mean * mean, 0.0);
    }
}

// SSD anchor decoding for a batch of detector outputs, compacted: one thread per (tile, anchor); those
// scoring at least `thr` append a row [x0 y0 x1 y1 score kx0 ky0 ... flat_index] (model pixels) at a slot
// taken with atomicAdd on the counter in out[0] (an int). The caller sorts rows by flat_index. With
// `corners`, reg rows are boxes decoded already (x0 y0 x1 y1; anchors unused, no keypoints).
extern "C" __global__ void decode_candidates(const float* reg, const float* scores, const float* anchors,
                                             int n, int n_anchors, int reg_width, int n_kps, int corners,
                                             float thr, int cap, float* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = scores[i];
    if (!(s >= thr)) return;
    int slot = atomicAdd((int*)out, 1);
    if (slot >= cap) return;
    const float* r = reg + (long long)i * reg_width;
    float* o = out + 1 + (long long)slot * (6 + 2 * n_kps);
    o[4] = s;
    o[5 + 2 * n_kps] = (float)i;
    if (corners) { o[0] = r[0]; o[1] = r[1]; o[2] = r[2]; o[3] = r[3]; return; }
    int a = i % n_anchors;
    float ax = anchors[2 * a], ay = anchors[2 * a + 1];
    float cx = r[0] + ax, cy = r[1] + ay, hw = r[2] * 0.5f, hh = r[3] * 0.5f;
    o[0] = cx - hw; o[1] = cy - hh; o[2] = cx + hw; o[3] = cy + hh;
    for (int k = 0; k < n_kps; ++k) { o[5 + 2 * k] = r[4 + 2 * k] + ax; o[6 + 2 * k] = r[5 + 2 * k] + ay; }
}
"""

KERNELS = ("place_level", "place_level_tiled", "warp_affine", "nv12_to_rgb", "decode_candidates", "chip_sharpness")
"""The kernels of _SOURCE (profiling tools tell vidx's own kernels apart by these names)."""
THREADS = 256
SHARPNESS_THREADS = 256
"""Threads of each of `chip_sharpness`'s blocks (a power of two: the kernel halves it to sum)."""
PLACE_TW, PLACE_BY, PLACE_TH = 32, 8, 16
"""`place_level_tiled`'s windows: PLACE_TW x PLACE_TH level pixels to a block of PLACE_TW x PLACE_BY threads."""
PLACE_SHARED_BYTES = 48 * 1024
"""The shared memory a `place_level_tiled` block may use (CUDA's limit without opting in); levels that shrink
their frames so much that a window's source rows would need more (and launches of over 65,535 images, past the
grid's third dimension) use the per-pixel form (`place_level_per_pixel`)."""


@functools.cache
def _kernels() -> dict[str, Any]:
    cp = require_cupy()
    defines = {"SHARPNESS_THREADS": SHARPNESS_THREADS, "PLACE_TW": PLACE_TW, "PLACE_BY": PLACE_BY,
               "PLACE_TH": PLACE_TH}
    module = cp.RawModule(code=_SOURCE, options=("-std=c++11", *(f"-D{k}={v}" for k, v in defines.items())))
    return {name: module.get_function(name) for name in KERNELS}


def _launch(name: str, n_threads: int, args: tuple[Any, ...]) -> None:
    if n_threads <= 0:
        return
    _kernels()[name](((n_threads + THREADS - 1) // THREADS,), (THREADS,), args)


def _frame_table(frames: Sequence[Array]) -> tuple[Array, Array]:
    """Device tables of frame pointers and (H, W, row stride in bytes); frames must be C-contiguous HxWx3 uint8
    CuPy arrays."""
    cp = require_cupy()
    for f in frames:
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or not f.flags.c_contiguous:
            raise ValueError(f"frames must be C-contiguous HxWx3 uint8, got {f.shape} {f.dtype}")
    ptrs = cp.asarray(np.array([f.data.ptr for f in frames], np.uint64))
    dims = cp.asarray(np.array([(*f.shape[:2], 3 * f.shape[1]) for f in frames], np.int32).reshape(-1))
    return ptrs, dims


def place_level(frames: Sequence[Array], width: int, height: int, out: Array) -> None:
    """Write each frame scaled to width x height (antialiased) at the top left of image n of `out`
    (N x H x W x 3 uint8, N >= len(frames)); the rest of out is left as it is."""
    if not frames:
        return
    ptrs, dims = _frame_table(frames)
    _place(ptrs, dims, len(frames), width, height, out, max(f.shape[0] for f in frames))


def place_coarser_level(finer: Array, count: int, finer_height: int, finer_width: int, width: int, height: int,
                        out: Array) -> None:
    """`place_level` from the pictures on a finer level's canvases: the top-left finer_height x finer_width of
    each of the first `count` images of `finer` (N x H x W x 3 uint8), with the tables built by arithmetic
    rather than one array view per image (host time: a step places several levels of up to 64 frames)."""
    if count <= 0:
        return
    if finer.dtype != np.uint8 or finer.ndim != 4 or not finer.flags.c_contiguous or count > finer.shape[0]:
        raise ValueError(f"finer must be a C-contiguous N x H x W x 3 uint8 array with N >= {count}")
    if finer_height > finer.shape[1] or finer_width > finer.shape[2]:
        raise ValueError(f"a {finer_height} x {finer_width} picture does not fit a {finer.shape[1:3]} canvas")
    _place(*_canvas_table(finer, count, finer_height, finer_width), count, width, height, out, finer_height)


def _canvas_table(canvases: Array, count: int, height: int, width: int) -> tuple[Array, Array]:
    """`_frame_table` of the top-left height x width pictures of the first `count` images of `canvases`."""
    cp = require_cupy()
    ptrs = np.uint64(canvases.data.ptr) + np.arange(count, dtype=np.uint64) * np.uint64(canvases.strides[0])
    dims = np.tile(np.array([height, width, canvases.strides[1]], np.int32), count)
    return cp.asarray(ptrs), cp.asarray(dims)


def place_level_per_pixel(frames: Sequence[Array], width: int, height: int, out: Array) -> None:
    """`place_level` by its one-thread-per-pixel 2-D form: what levels that shrink their frames too much for
    `place_level_tiled`'s windows use, and the reference the tiled form is checked against."""
    if frames:
        _check_out(out, len(frames))
        _place_per_pixel(*_frame_table(frames), len(frames), width, height, out)


def _check_out(out: Array, count: int) -> None:
    if out.dtype != np.uint8 or out.ndim != 4 or not out.flags.c_contiguous or count > out.shape[0]:
        raise ValueError(f"out must be a C-contiguous N x H x W x 3 uint8 array with N >= {count}")


def _place_per_pixel(ptrs: Array, dims: Array, count: int, width: int, height: int, out: Array) -> None:
    _launch("place_level", count * height * width,
            (ptrs, dims, np.int32(count), np.int32(width), np.int32(height), np.int32(out.shape[1]),
             np.int32(out.shape[2]), out))


def place_rows(source_height: int, height: int) -> int:
    """The source rows one `place_level_tiled` window of a level `height` rows high, scaled from `source_height`
    rows, filters along x (an upper bound, with a row of slack at each end for float rounding)."""
    ratio = source_height / height
    return math.ceil((PLACE_TH - 1) * ratio + 2 * max(ratio, 1.0)) + 3


def place_shared_bytes(source_height: int, height: int) -> int:
    """The shared memory of one `place_level_tiled` block (float RGB for each of a window's rows and columns); the
    tiled form runs where it is at most PLACE_SHARED_BYTES."""
    return place_rows(source_height, height) * PLACE_TW * 3 * 4


def _place(ptrs: Array, dims: Array, count: int, width: int, height: int, out: Array, tallest: int) -> None:
    """Place `count` frames (device tables `ptrs`, `dims`; the tallest `tallest` rows high) on `out`'s images."""
    _check_out(out, count)
    if count <= 0 or width <= 0 or height <= 0:
        return
    out_h, out_w = out.shape[1:3]
    rows, shared = place_rows(tallest, height), place_shared_bytes(tallest, height)
    if shared > PLACE_SHARED_BYTES or count > 65535:
        _place_per_pixel(ptrs, dims, count, width, height, out)
        return
    grid = (-(-min(width, out_w) // PLACE_TW), -(-min(height, out_h) // PLACE_TH), count)
    if grid[0] and grid[1]:
        _kernels()["place_level_tiled"](grid, (PLACE_TW, PLACE_BY, 1),
                                        (ptrs, dims, np.int32(width), np.int32(height), np.int32(out_h),
                                         np.int32(out_w), np.int32(rows), out), shared_mem=shared)


def chip_sharpness(chips: Array) -> Array:
    """K float32 on the device: each K x S x S x 3 uint8 chip's variance of the Laplacian of its grey image (the
    host's `imageops.laplacian_variance` in one launch, sums in double)."""
    cp = require_cupy()
    chips = cp.ascontiguousarray(chips)
    if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[3] != 3 or chips.shape[1] != chips.shape[2]:
        raise ValueError(f"chips must be K x S x S x 3 uint8, got {chips.shape} {chips.dtype}")
    out = cp.zeros(len(chips), cp.float32)
    if len(chips) and chips.shape[1] > 2:
        _kernels()["chip_sharpness"]((len(chips),), (SHARPNESS_THREADS,), (chips, np.int32(chips.shape[1]), out))
    return out


def fits_flat_index(n: int) -> bool:
    """Whether `queue_candidates` can index n anchors (its rows carry the flat index as a float32)."""
    return n < 1 << 24


@dataclass
class QueuedRows:
    """Candidate rows on their way to the host: `host` (pinned) holds them once `ready` has happened. The
    pinned buffer and the arrays the kernel reads are held in `IN_FLIGHT` until then, read or not (a step
    that failed drops its queued runs)."""

    host: np.ndarray
    ready: Any
    n_keypoints: int


def queue_candidates(reg: Array, scores: Array, anchors: Array | None, *, threshold: float, n_keypoints: int,
                     cap: int = 4096) -> QueuedRows:
    """Anchor decoding and thresholding of a detector batch in one launch on the current stream, and the copy of
    its rows to the host queued behind it, for `candidate_rows` (so that a detector can queue all its runs
    before waiting for any, and wait for each without waiting for what the stream does after it).

    reg: B x A x R float32 regressors, scores: B x A float32, anchors: A x 2 float32 centres in model pixels;
    anchors None: reg holds boxes decoded already (B x A x 4 corners; n_keypoints 0).
    """
    cp = require_cupy()
    reg = cp.ascontiguousarray(reg, dtype=cp.float32)
    scores = cp.ascontiguousarray(scores, dtype=cp.float32)
    b, a = scores.shape
    if not fits_flat_index(b * a):
        raise ValueError(f"{b} x {a} anchors: flat indices would not be exact in float32; use smaller batches")
    if anchors is None and n_keypoints:
        raise ValueError("boxes decoded already carry no keypoints")
    width = 6 + 2 * n_keypoints
    out = cp.zeros(1 + cap * width, cp.float32)  # out[0] is the int counter: all-zero bits are 0 either way
    _launch("decode_candidates", b * a,
            (reg, scores, scores if anchors is None else anchors, np.int32(b * a), np.int32(a),
             np.int32(reg.shape[2]), np.int32(n_keypoints), np.int32(anchors is None), np.float32(threshold),
             np.int32(cap), out))
    stream = cp.cuda.get_current_stream()
    memory = cp.cuda.alloc_pinned_memory(out.nbytes)  # pooled; freed with `host` once the rows are read
    host = np.frombuffer(memory, np.float32, out.size)
    out.get(stream=stream, out=host, blocking=False)
    ready = stream.record()
    IN_FLIGHT.hold(ready, memory, reg, scores, anchors, out)
    return QueuedRows(host, ready, n_keypoints)


def candidate_rows(queued: QueuedRows) -> np.ndarray | None:
    """The rows `queue_candidates` queued, once they are on the host (waiting for them alone): N x (6 + 2K) float32
    [x0 y0 x1 y1 score kps... flat_index] in model pixels, in flat (image, anchor) order; None when more anchors
    passed than it had room for (the caller then decodes another way)."""
    queued.ready.synchronize()
    host, width = queued.host, 6 + 2 * queued.n_keypoints
    n = int(host[:1].view(np.int32)[0])
    if n > (len(host) - 1) // width:
        return None
    rows = host[1:1 + n * width].reshape(n, width).copy()  # the pinned buffer goes back to the pool
    return rows[np.argsort(rows[:, -1], kind="stable")]


def resize(img: Array, out_h: int, out_w: int) -> Array:
    """Antialiased resize of one HxWx3 uint8 device image."""
    img = require_cupy().ascontiguousarray(img)
    if img.shape[0] == out_h and img.shape[1] == out_w:
        return img
    out = require_cupy().empty((1, out_h, out_w, 3), np.uint8)
    place_level([img], out_w, out_h, out)
    return out[0]


def warp_affine_frames(frames: Sequence[Array], src_from_dst: np.ndarray, frame_index: Sequence[int],
                       size: int) -> Array:
    """K x size x size x 3 chips: chip k samples frames[frame_index[k]] at src_from_dst[k] @ (x, y, 1)."""
    cp = require_cupy()
    out = cp.empty((len(frame_index), size, size, 3), cp.uint8)
    if not len(frame_index):
        return out
    frames = [cp.ascontiguousarray(f) for f in frames]
    ptrs, dims = _frame_table(frames)
    slots = cp.asarray(np.asarray(frame_index, np.int32))
    maps = cp.asarray(np.asarray(src_from_dst, np.float32).reshape(-1, 6))
    _launch("warp_affine", len(frame_index) * size * size,
            (ptrs, dims, slots, maps, np.int32(len(frame_index)), np.int32(size), out))
    return out


def warp_affine(img: Array, src_from_dst: np.ndarray, frame_index: Sequence[int], size: int) -> Array:
    """Chips from one image (kept for the imageops dispatch): K x size x size x 3."""
    return warp_affine_frames([img], src_from_dst, frame_index, size)


def nv12_to_rgb(y_ptr: int, uv_ptr: int, y_pitch: int, uv_pitch: int, height: int, width: int, *,
                rotation: int = 0, bt709: bool | None = None, full_range: bool = False,
                out: Array | None = None) -> Array:
    """An upright H' x W' x 3 RGB CuPy array from an NV12 surface given by device pointers.

    bt709 defaults to the usual convention: BT.709 for HD (height >= 720), BT.601 below.
    """
    cp = require_cupy()
    rot = rotation % 360
    if rot not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    shape = (width, height, 3) if rot in (90, 270) else (height, width, 3)
    if out is None:
        out = cp.empty(shape, cp.uint8)
    elif tuple(out.shape) != shape or out.dtype != cp.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous {shape} uint8 array")
    if bt709 is None:
        bt709 = height >= 720
    _launch("nv12_to_rgb", height * width,
            (np.uint64(y_ptr), np.uint64(uv_ptr), np.int32(y_pitch), np.int32(uv_pitch), np.int32(height),
             np.int32(width), np.int32(rot), np.int32(bool(bt709)), np.int32(bool(full_range)), out))
    return out
