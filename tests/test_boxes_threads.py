"""Box formation is reentrant: threads forming boxes at once get what a lone call gets."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import edgedb


def test_concurrent_calls_match_serial_calls(real_maps):
    jobs = [(prob, shape, mode) for prob, shape in real_maps.values() for mode in ("fast", "slow")] * 3

    def run(job):
        prob, shape, mode = job
        boxes = edgedb.boxes_from_prob(prob, score_mode=mode, dest_size=shape)
        return [(b.points.tobytes(), b.score) for b in boxes]

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, jobs))
    assert concurrent == serial


def test_gil_is_released_during_formation():
    # While one thread forms boxes on a large map, another thread keeps running Python.
    import threading

    prob = np.zeros((6000, 6000), np.float32)
    prob[::3, ::3] = 0.9  # many regions: a long native call
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        edgedb.boxes_from_prob(prob)
    finally:
        done.set()
        counter.join()
    assert ticks > 1000
