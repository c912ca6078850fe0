"""Memory of tiled detection on huge images: beyond the decoded image, it should grow with
the batch of tiles, not with the image.

    python bench/bench_tiling_memory.py [--sides 10000 20000] [--tile-batch 4]

Each side runs in a fresh process (peak RSS is per process): a generated scene tiled up
to side x side pixels, detected with tile="on" from an array. Reports the peak RSS, the
image's own bytes, and what is left: the detector's working memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(side: int, batch: int) -> dict:
    import numpy as np

    from edgedb import EdgeDetector
    from edgedb.synthetic import make_text_image

    scene = make_text_image(0, size=(720, 1280)).image
    image = np.empty((side, side, 3), np.uint8)  # filled in place: no larger copy raises the peak first
    for y in range(0, side, 720):
        for x in range(0, side, 1280):
            block = image[y:y + 720, x:x + 1280]
            block[...] = scene[:block.shape[0], :block.shape[1]]
    with EdgeDetector(tile="on", tile_batch=batch) as detector:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        boxes = detector.detect(image)
        seconds = time.perf_counter() - start
        tiles = len(detector._tiles(side, side)[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"side": side, "tiles": tiles, "boxes": len(boxes), "seconds": seconds, "image_mb": image.nbytes / 2**20,
            "peak_rss_mb": peak / 2**20, "rss_before_detect_mb": before / 2**20,
            "working_mb": (peak - before) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[10000, 20000])
    parser.add_argument("--tile-batch", type=int, default=4)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.tile_batch)))
        return 0
    for side in args.sides:
        out = subprocess.run([sys.executable, __file__, "--child", str(side), "--tile-batch", str(args.tile_batch)],
                             capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"{side}x{side}: {row['tiles']} tiles, {row['boxes']} boxes, {row['seconds']:.0f} s; image "
              f"{row['image_mb']:.0f} MB; peak RSS {row['peak_rss_mb']:.0f} MB, of which detection "
              f"{row['working_mb']:.0f} MB above the image and model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
