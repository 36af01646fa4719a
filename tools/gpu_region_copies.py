"""How the tracking thread's copies to the host behave on a GPU, with CuPy alone (no models, no decoders):
`engines.arrays.regions_to_host` (2-D copies by the copy engine into one pinned buffer, one wait) against the
way before it (each rectangle cut by a CuPy kernel and copied with a wait of its own).

    PYTHONPATH=. python3 tools/gpu_region_copies.py

First whether regions_to_host gives the device slices exactly (frames, chips, a 2-D image, a strided view, rows
backwards); then one step's copies (24 face chips of 150x150 and 12 person crops of 1080p frames) timed both
ways, median of 20, with the GPU idle and with a second stream kept busy by FP16 matrix products, as the
models keep it while the tracking thread copies. One JSON line each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import numpy as np

from engines.arrays import Array, Region, regions_to_host, require_cupy, to_host

cp = require_cupy()
rng = np.random.default_rng(1)


def device_images(*shape: int) -> Array:
    return cp.asarray(rng.integers(0, 255, shape, dtype=np.uint8))


def kernel_copies(regions: Sequence[Region]) -> list[np.ndarray]:
    return [to_host(image[y0:y1, x0:x1]) for image, y0, y1, x0, x1 in regions]


def main() -> None:
    frames, chips, grey = device_images(2, 1080, 1920, 3), device_images(5, 150, 150, 3), device_images(64, 96)
    cases: list[Region] = [(frames[1], 3, 901, 17, 333), (chips[3], 0, 150, 0, 150),
                           (frames[0], 1079, 1080, 0, 1920), (grey, 5, 60, 1, 95),
                           (frames[1, :, ::2], 10, 20, 30, 40), (frames[0, ::-1], 0, 7, 9, 19)]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        copies = regions_to_host(cases)
    same = all(np.array_equal(host, image[y0:y1, x0:x1].get())
               for (image, y0, y1, x0, x1), host in zip(cases, copies, strict=True))
    print(json.dumps({"regions_to_host_equals_device_slices": same}), flush=True)

    batch, step_chips = device_images(32, 1080, 1920, 3), device_images(64, 150, 150, 3)
    step: list[Region] = [(step_chips[i], 0, 150, 0, 150) for i in range(24)]
    step += [(batch[2 * i], 100 + 20 * i, 800 + 10 * i, 300 + 50 * i, 600 + 50 * i) for i in range(12)]
    busy = cp.cuda.Stream(non_blocking=True)
    matrix = cp.ones((8192, 8192), cp.float16)

    def median_ms(copy: Callable[[Sequence[Region]], list[np.ndarray]], load: bool, n: int = 20) -> float:
        times = []
        for _ in range(n):
            if load:
                with busy:
                    for _ in range(30):
                        matrix @ matrix
            with stream:
                start = time.perf_counter()
                copy(step)
                times.append(time.perf_counter() - start)
            busy.synchronize()
        return round(float(np.median(times)) * 1e3, 3)

    for load in (False, True):
        ways = {"kernel": kernel_copies, "engine": regions_to_host}
        for way in ways.values():
            median_ms(way, load, 3)  # warm-up
        print(json.dumps({"busy_stream": load, "regions": len(step),
                          "ms_per_step_median": {name: median_ms(way, load) for name, way in ways.items()}}),
              flush=True)


if __name__ == "__main__":
    main()
