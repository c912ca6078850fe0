"""The progress line printed while TensorRT builds an engine.

TensorRT reports nested phases ("Building engine" > "Tactic selection" > ...) through an
``IProgressMonitor``; ``BuildProgress`` keeps the open phases and renders one line, which
it rewrites in place on a terminal and prints once per top-level phase elsewhere (logs
stay short). The TensorRT subclass is made by ``progress_monitor`` at build time, since
``tensorrt`` is imported only then.

The callbacks never raise: TensorRT's trampoline turns any exception in
``step_complete`` into ``false``, which cancels the build (``python/src/infer/pyCore.cpp``
v10.3.0 l.978-994, "Use the exception as an indicator that we should cancel the build"),
so a closed or broken stderr would read as a failed build. A line that cannot be written
switches the progress line off for the rest of the build.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Optional, TextIO

log = logging.getLogger(__name__)


class BuildProgress:
    """Open build phases and their step counts, rendered as one line."""

    def __init__(self, stream: Optional[TextIO] = None, *, label: str = "building engine", clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self._clock = clock
        self._start = clock()
        self._phases: list[list] = []  # [name, steps done, steps] outermost first
        self._lock = threading.Lock()  # TensorRT may report from its own threads
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_width = 0
        self._silent = False  # set when the stream failed: the build goes on without a line

    # TensorRT's callbacks (the names of IProgressMonitor's methods) ------------------------
    def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
        with self._lock:
            self._phases.append([phase_name, 0, max(int(num_steps), 0)])
            if self._interactive or len(self._phases) == 1:
                self._render()

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            for phase in reversed(self._phases):
                if phase[0] == phase_name:
                    phase[1] = int(step) + 1
                    break
            if self._interactive:
                self._render()
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            for index in range(len(self._phases) - 1, -1, -1):
                if self._phases[index][0] == phase_name:
                    del self._phases[index]
                    break
            if self._interactive:
                self._render()

    # ---------------------------------------------------------------------------------------
    def line(self) -> str:
        elapsed = int(self._clock() - self._start)
        parts = [f"{name} {done}/{steps}" if steps else name for name, done, steps in self._phases]
        where = " > ".join(parts) if parts else "preparing"
        return f"{self.label} [{elapsed // 60}:{elapsed % 60:02d}] {where}"

    def _render(self) -> None:
        if self._silent:
            return
        try:
            self._write_line()
        except Exception as error:  # never into TensorRT: it would cancel the build
            self._silent = True
            log.debug("build progress line switched off: %s", error)

    def _write_line(self) -> None:
        text = self.line()
        if self._interactive:
            pad = max(self._last_width - len(text), 0)
            self.stream.write("\r" + text + " " * pad)
            self._last_width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, message: str) -> None:
        elapsed = self._clock() - self._start
        with self._lock:
            if self._silent:
                return
            prefix = "\r" + " " * self._last_width + "\r" if self._interactive else ""
            try:
                self.stream.write(f"{prefix}{self.label}: {message} in {elapsed:.1f} s\n")
                self.stream.flush()
            except Exception as error:
                self._silent = True
                log.debug("build progress line switched off: %s", error)


def progress_monitor(trt, progress: BuildProgress):
    """A ``trt.IProgressMonitor`` forwarding to ``progress`` (a subclass made here, because
    TensorRT types can only be subclassed once tensorrt is imported)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            super().__init__()  # pybind11 bases must be initialized (TensorRT's progress monitor sample)

        # Each callback swallows what BuildProgress did not: an exception must not reach
        # TensorRT (see the module doc); True from step_complete lets the build go on.
        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                progress.phase_start(phase_name, parent_phase, num_steps)
            except Exception as error:
                log.debug("progress phase_start: %s", error)

        def step_complete(self, phase_name, step):
            try:
                progress.step_complete(phase_name, step)
            except Exception as error:
                log.debug("progress step_complete: %s", error)
            return True

        def phase_finish(self, phase_name):
            try:
                progress.phase_finish(phase_name)
            except Exception as error:
                log.debug("progress phase_finish: %s", error)

    return _Monitor()
