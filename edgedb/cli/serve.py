"""``edgedb serve``: the detector on a real Triton server (export_triton into a temporary
repository, then edgedb.serving.TritonServer) until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from edgedb.cli._common import _add_repository_arguments, _bounded_int, _export_options


def add_parser(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve the detector on Triton Inference Server (HTTP and gRPC)",
        description="Exports the model to a temporary Triton repository and runs tritonserver on it (the one on "
        "PATH, $EDGEDB_TRITONSERVER, or the nvidia-pytriton wheel's), bound to 127.0.0.1 unless --host says "
        "otherwise; prints the endpoints when ready and stops cleanly on Ctrl-C or SIGTERM. Clients: "
        "edgedb.serving.TritonDetector, or any Triton client.")
    _add_repository_arguments(serve)
    server = serve.add_argument_group("the server (edgedb.serving.TritonServer)")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    server.add_argument("--http-port", type=_bounded_int(1, 65535), default=8000, help="(default 8000)")
    server.add_argument("--grpc-port", type=_bounded_int(1, 65535), default=8001, help="(default 8001)")
    server.add_argument("--metrics-port", type=_bounded_int(0, 65535), default=8002, help="(default 8002; 0: off)")
    server.add_argument("--tritonserver", type=Path, help="the tritonserver binary (default: found as above)")
    server.add_argument("--repository", type=Path,
                        help="export here and keep it (default: a temporary folder, removed at exit)")
    serve.set_defaults(run=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from edgedb.serving import TritonServer, export_triton, find_tritonserver

    find_tritonserver(args.tritonserver)  # before the export: no server, no work
    with tempfile.TemporaryDirectory(prefix="edgedb-repository-") as scratch:
        repository = export_triton(args.model, args.repository or Path(scratch), **_export_options(args))
        stop = threading.Event()

        def interrupt(number, frame):  # while starting: stop the start at once
            raise KeyboardInterrupt

        def on_signal(number, frame):  # once serving: only note it, so it cannot land mid-print
            stop.set()

        # SIGINT too: a server started in the background by a script inherits SIGINT ignored
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {number: signal.signal(number, interrupt) for number in signals}
        try:
            with TritonServer(repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                              metrics_port=args.metrics_port, tritonserver=args.tritonserver) as server:
                for number in signals:
                    signal.signal(number, on_signal)
                print(f"serving {args.name} ({args.model}) after {server.startup_seconds:.1f} s: "
                      f"HTTP {server.http_url}, gRPC {server.grpc_url}"
                      + (f", metrics {args.host}:{args.metrics_port}/metrics" if args.metrics_port else "")
                      + f"; health: http://{server.http_url}/v2/health/ready; Ctrl-C stops", flush=True)
                while server.alive() and not stop.wait(0.2):
                    pass
                if stop.is_set():
                    print("edgedb serve: stopping", file=sys.stderr, flush=True)
                    return 0
                print(f"edgedb serve: error: tritonserver exited with code {server.wait()}:\n{server.log_tail()}",
                      file=sys.stderr)
                return 2
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
