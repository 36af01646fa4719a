#!/usr/bin/env bash
# One GPU lease: the same job through Ray (one GPU worker actor) and in-process, timed, results compared.
#   bash tools/gpu_ray_check.sh   (after the devkit parts incl. ray are received; results under $OUT)
set -uo pipefail
. /tmp/devkit/env
export PYTHONPATH=$PWD:${PYTHONPATH:-} VIDX_CACHE_DIR=$PWD/.devcache PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -c "from pathlib import Path; from vidx.bench_video import bench_clips; bench_clips(Path('/tmp/vidx-bench'), None, print)" > "$OUT/build.log" 2>&1
mkdir -p /tmp/arch
for i in 0 1 2 3 4 5 6; do for c in h264_0 h264_1; do
  cp /tmp/vidx-bench/bench_$c.mp4 /tmp/arch/${c}_$i.mp4; printf "$i$c" >> /tmp/arch/${c}_$i.mp4
done; done
/usr/bin/time -f "%e s wall" timeout 280 python3 -m vidx job submit /tmp/arch --out /tmp/ray_out --executor ray --device gpu --json > "$OUT/ray.json" 2> "$OUT/ray.err"
/usr/bin/time -f "%e s wall" timeout 200 python3 -m vidx index /tmp/arch --out /tmp/local_out --device gpu --json > "$OUT/local.json" 2> "$OUT/local.err"
python3 - <<'PY' | tee "$OUT/compare.txt"
import json, os, sqlite3
out = os.environ.get("OUT", "/tmp/out")
def rows(db):
    c = sqlite3.connect(db)
    return sorted(c.execute("select v.path, t.start_s, t.end_s, t.n_faces from tracks t join videos v on v.id = t.video_id"))
for name in ("ray", "local"):
    d = json.load(open(f"{out}/{name}.json"))
    print(name, {k: d.get(k) for k in ("done", "failed", "frames_decoded", "status")}, d.get("workers"))
a, b = rows("/tmp/ray_out/index.sqlite"), rows("/tmp/local_out/index.sqlite")
same = [(p, round(s, 3), round(e, 3), n) for p, s, e, n in a] == [(p, round(s, 3), round(e, 3), n) for p, s, e, n in b]
print("tracks", len(a), len(b), "identical" if same else "DIFFERENT")
PY
tail -1 "$OUT/ray.err"; tail -1 "$OUT/local.err"
