"""Soak: many frames of many sizes through ``EdgeDetector.stream``, memory sampled as it goes.

    python bench/bench_soak.py [--frames 10000] [--threads 1] [--backend NAME] [--markdown FILE]

Frames are generated (``edgedb.synthetic.make_text_image``) once per size and reused:
mostly small and medium (64x64 .. 540x960), some 720x1280 and 960x1280, gray and BGRA
ones, and in every 1000 frames one huge (6000x6000), two tiny (1x1, 8x8) and four bad
ones (float32, shape (10, 10, 5), empty, None). The detector runs in ``limit_type="max"``
mode (longer side at most ``--limit-side-len``, 960) so that small frames stay small and
10,000 frames take minutes on one thread; in the default ``min`` mode every frame would
run at 736 pixels or more.

A bad frame raises InvalidInputError (InvalidInputTypeError for a wrong type or None) out of
``stream()``, and since ``stream()`` is a generator that ends it; the boxes of the frame
before it, already computed, are not yielded. The soak does what an application must:
it catches the error and starts a new stream at the next frame. Lost boxes are counted.

Before the soak, the default detector (``min`` 736, ``max_side_len`` 4096) runs a 720p
frame, a 4096x4096 one and a 20000x20000 one (run at 4096x4096), and 720p frames again,
to show what a huge input costs and that memory goes back (``--skip-huge`` to skip).

Memory is the resident set (VmRSS, and VmHWM for the peak) from /proc/self/status, every
100 frames. RSS moves by tens of MB from one sample to the next (what the allocator holds
depends on the last frames' sizes; right after a huge frame it is up to 70 MB higher), so
the steady state is the highest RSS over the first 1000 frames (every kind of frame, the
huge one included), and the soak fails (exit 1) if the RSS at the end, or the median RSS
over the last 1000 frames, exceeds it by more than ``--allowed-growth`` MB (50).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

SAMPLE_EVERY = 100  # RSS samples; the table shows every 500th frame
HUGE_EVERY = 1000
WARM_UP_FRAMES = 1000  # the steady state: the highest RSS over these (every kind of frame once)


def memory_mb(key: str = "VmRSS") -> float:
    """A /proc/self/status figure (VmRSS: resident now, VmHWM: resident peak) in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def frame_pool():
    """name -> frame, made once: the sizes a soak cycles through, and the special ones."""
    import cv2
    import numpy as np

    from edgedb.synthetic import make_text_image

    sizes = {"small": [(64, 64), (96, 160), (128, 128), (160, 240), (240, 320)],
             "medium": [(360, 480), (480, 640), (540, 960)],
             "large": [(720, 1280), (960, 1280)]}
    pool = {}
    for kind, shapes in sizes.items():
        for seed, shape in enumerate(shapes):
            pool[f"{kind}-{shape[0]}x{shape[1]}"] = make_text_image(seed, size=shape).image
    pool["gray-480x640"] = cv2.cvtColor(pool["medium-480x640"], cv2.COLOR_BGR2GRAY)
    pool["bgra-360x480"] = cv2.cvtColor(pool["medium-360x480"], cv2.COLOR_BGR2BGRA)
    pool["huge-6000x6000"] = cv2.resize(make_text_image(9, size=(600, 600)).image, (6000, 6000))
    pool["tiny-1x1"] = np.full((1, 1, 3), 255, np.uint8)
    pool["tiny-8x8"] = np.zeros((8, 8, 3), np.uint8)
    bad = {"bad-float32": np.zeros((64, 64, 3), np.float32), "bad-10x10x5": np.zeros((10, 10, 5), np.uint8),
           "bad-empty": np.zeros((0, 0, 3), np.uint8), "bad-none": None}
    return pool, bad


def schedule(count: int, pool: dict, bad: dict, seed: int = 0) -> list[str]:
    """The name of every frame: 60 % small, 25 % medium, 10 % gray/BGRA/medium, 5 % large,
    and at fixed places in every 1000 the huge, tiny and bad frames."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kinds = {k: [n for n in pool if n.startswith(k)] for k in ("small", "medium", "large")}
    kinds["other"] = ["gray-480x640", "bgra-360x480"]
    special = {HUGE_EVERY - 1: "huge-6000x6000", 250: "tiny-8x8", 500: "tiny-1x1",
               100: "bad-float32", 300: "bad-10x10x5", 700: "bad-empty", 900: "bad-none"}
    names = []
    for index in range(count):
        if index % HUGE_EVERY in special:
            names.append(special[index % HUGE_EVERY])
            continue
        kind = rng.choice(["small", "medium", "other", "large"], p=[0.6, 0.25, 0.10, 0.05])
        names.append(str(rng.choice(kinds[kind])))
    return names


def huge_input_check(threads: int, backend: str = "auto") -> list[tuple[str, float, float]]:
    """(step, RSS MB after it, peak RSS MB so far) with the default detector settings."""
    import cv2
    import numpy as np

    from edgedb import EdgeDetector
    from edgedb.synthetic import make_text_image

    steps = []
    hd = make_text_image(0, size=(720, 1280)).image
    with EdgeDetector(backend=backend, threads=threads) as detector:
        for _ in range(3):
            detector.detect(hd)
        steps.append(("720p x3", memory_mb(), memory_mb("VmHWM")))
        side = make_text_image(1, size=(1024, 1024)).image
        big = cv2.resize(side, (4096, 4096))
        detector.detect(big)
        del big
        steps.append(("4096x4096 (run at 4096x4096)", memory_mb(), memory_mb("VmHWM")))
        huge = cv2.resize(side, (20000, 20000), interpolation=cv2.INTER_NEAREST)  # 1.2 GB itself
        steps.append(("20000x20000 image made", memory_mb(), memory_mb("VmHWM")))
        detector.detect(huge)
        steps.append(("20000x20000 (run at 4096x4096)", memory_mb(), memory_mb("VmHWM")))
        del huge
        steps.append(("image freed", memory_mb(), memory_mb("VmHWM")))
        for _ in range(3):
            detector.detect(hd)
        steps.append(("720p x3 again", memory_mb(), memory_mb("VmHWM")))
    return steps


def soak(count: int, threads: int, limit_side_len: int, backend: str = "auto") -> dict:
    from edgedb import EdgeDetector, InvalidInputError, InvalidInputTypeError

    pool, bad = frame_pool()
    frames = {**pool, **bad}
    names = schedule(count, pool, bad)
    samples: list[tuple[int, float]] = []
    fed = 0

    def feed(start: int):
        nonlocal fed
        for index in range(start, count):
            if index % SAMPLE_EVERY == 0:
                samples.append((index, memory_mb()))
            fed = index + 1
            yield frames[names[index]]

    with EdgeDetector(backend=backend, threads=threads, limit_type="max", limit_side_len=limit_side_len) as detector:
        for frame in pool.values():  # every size once before the clock starts
            detector.detect(frame)
        results = errors = 0
        error_kinds: dict[str, int] = {}
        start = time.perf_counter()
        while fed < count:
            try:
                for _ in detector.stream(feed(fed)):
                    results += 1
            except (InvalidInputError, InvalidInputTypeError) as error:  # the stream is over: a new one goes on
                errors += 1
                kind = f"{names[fed - 1]}: {type(error).__name__}"
                error_kinds[kind] = error_kinds.get(kind, 0) + 1
                if not names[fed - 1].startswith("bad-"):
                    raise RuntimeError(f"frame {fed - 1} ({names[fed - 1]}) should not raise: {error}") from error
        seconds = time.perf_counter() - start
        samples.append((count, memory_mb()))
    good = sum(not n.startswith("bad-") for n in names)
    steady = max(rss for index, rss in samples if index <= WARM_UP_FRAMES)
    later = [rss for index, rss in samples if index > WARM_UP_FRAMES] or [steady]
    last = sorted(rss for index, rss in samples if index > count - 1000)
    return dict(frames=count, good=good, results=results, errors=errors, error_kinds=error_kinds, steady=steady,
                later_max=max(later), later_mean=sum(later) / len(later), end=samples[-1][1],
                last_median=last[len(last) // 2], samples=samples, peak=memory_mb("VmHWM"), seconds=seconds)


def markdown(args, huge, result) -> str:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = ["## Soak (issue 11)", "",
             f"`python bench/bench_soak.py --frames {args.frames} --threads {args.threads} --backend {args.backend}` on {cpu}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, ONNX Runtime {onnxruntime.__version__}.", ""]
    if huge:
        lines += ["Default detector (min 736, max_side_len 4096), one thread:", "",
                  "| step | RSS after, MB | peak RSS so far, MB |", "|---|---:|---:|"]
        lines += [f"| {step} | {rss:.0f} | {peak:.0f} |" for step, rss, peak in huge]
        lines.append("")
    if result:
        r = result
        lines += [f"{r['frames']} frames through `EdgeDetector.stream` (limit max {args.limit_side_len}): "
                  f"{r['frames'] / r['seconds']:.1f} frames/s ({r['seconds']:.0f} s), "
                  f"{r['results']} results for {r['good']} good frames, {r['errors']} bad frames refused "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(r['error_kinds'].items()))}); "
                  f"each ended its stream after the boxes of the frames before it; a new stream went on.", "",
                  f"Steady state (highest RSS over the first {WARM_UP_FRAMES} frames) {r['steady']:.0f} MB; after "
                  f"them at most {r['later_max']:.0f} MB, mean {r['later_mean']:.0f} MB, median over the last 1000 "
                  f"frames {r['last_median']:.0f} MB, at the end {r['end']:.0f} MB (sampled every {SAMPLE_EVERY} "
                  f"frames); peak RSS of the process {r['peak']:.0f} MB.", "",
                  "| frame | RSS, MB | vs steady state, MB |", "|---:|---:|---:|"]
        shown = [(i, rss) for i, rss in r["samples"] if i % 500 == 0 or i == r["frames"]]
        lines += [f"| {index} | {rss:.0f} | {rss - r['steady']:+.0f} |" for index, rss in shown]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default="auto", help="EdgeDetector's backend (default auto)")
    parser.add_argument("--limit-side-len", type=int, default=960)
    parser.add_argument("--allowed-growth", type=float, default=50.0, help="MB over the steady state")
    parser.add_argument("--skip-huge", action="store_true", help="skip the 4096 / 20000 pixel check")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown section here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import cv2

    cv2.setNumThreads(args.threads)

    huge = None if args.skip_huge else huge_input_check(args.threads, args.backend)
    if huge:
        for step, rss, peak in huge:
            print(f"{step:<34} RSS {rss:7.0f} MB   peak {peak:7.0f} MB", flush=True)
    result = soak(args.frames, args.threads, args.limit_side_len, args.backend) if args.frames else None
    text = markdown(args, huge, result)
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if result:
        grown = max(result["end"], result["last_median"])
        if grown > result["steady"] + args.allowed_growth:
            print(f"FAIL: RSS {grown:.0f} MB at the end or over the last 1000 frames, more than "
                  f"{args.allowed_growth:.0f} MB over the steady state ({result['steady']:.0f} MB)", file=sys.stderr)
            return 1
        bad = result["frames"] - result["good"]
        if result["errors"] != bad or result["results"] != result["good"]:
            print(f"FAIL: {result['errors']} errors for {bad} bad frames, {result['results']} results for "
                  f"{result['good']} good frames (every good frame's boxes expected)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
