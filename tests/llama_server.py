"""llama.cpp's own HTTP server (``llama-server``), as xllamacpp embeds it, run on its own: a
real OpenAI-compatible server that is not llmlb, for the endpoint tests.

``python -m tests.llama_server MODEL_PATH NAME KEY`` prints ``llama-server listening on URL``
(as llmlb's processes do, so ``tests.support.Process`` reads it) and serves until a signal.
"""

from __future__ import annotations

import signal
import sys
import threading


def main() -> None:
    import xllamacpp

    path, name, key = sys.argv[1:4]
    params = xllamacpp.CommonParams()
    params.model.path = path
    params.model_alias = {name}
    params.n_ctx = 1024
    params.n_parallel = 2
    params.kv_unified = True
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.api_keys = [key]
    params.endpoint_metrics = True  # its load, as the router reads it (llamacpp:*)
    params.verbosity = -1
    server = xllamacpp.Server(params)
    print(f"llama-server listening on {server.listening_address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server


if __name__ == "__main__":
    main()
