"""``llmlb serve --workers N``: the parent of N router processes on one port and database.

A router process answers with one core (Python runs one thread at a time). Several share
the listening sockets the supervisor bound (so a port that is taken fails before anything
starts, and ``--port 0`` gives them all one port), and the kernel hands each new connection
to one of them. They are routers on one database, as several routers on PostgreSQL are, plus
a board (``router.workers.board``) for what changes on every request: in-flight counts and
the queue. Prometheus' counters go to files they all write (``router.telemetry.metrics``).

Worker 0 starts alone first: it brings the database to its schema and makes the node token
and the first admin, once; then the others. The URL is printed when all of them answer. A
worker that dies is started again in its place (what it had in flight is cleared from the
board: those requests died with it); one that keeps dying within seconds of its start
stops the router. SIGTERM or SIGINT stops every worker gracefully, each finishing its
requests as a single router does, and the supervisor last.

Workers are spawned (a fresh interpreter: prometheus_client reads PROMETHEUS_MULTIPROC_DIR
as it is imported), each in a process group of its own, so that a terminal's Ctrl-C reaches
the supervisor alone, which stops each worker once (uvicorn takes a second signal as "stop
now").
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.synchronize import Event
from pathlib import Path

from llmlb.common.errors import BadRequest, LlmlbError
from llmlb.common.files import write_private
from llmlb.common.logs import configure_logging
from llmlb.common.serving import run_async, url_of
from llmlb.common.settings import ROUTER_URL_FILE, RouterSettings
from llmlb.router.listening import listening_sockets, print_listening
from llmlb.router.workers.board import Board, WorkerPlace

log = logging.getLogger(__name__)

QUICK_DEATH_SECONDS = 10.0  # a worker that dies this soon after its start ...
MAX_QUICK_DEATHS = 5  # ... this many times in a row stops the router
STARTUP_TIMEOUT_SECONDS = 600.0  # (the first migration of a large history can take minutes)
_PR_SET_PDEATHSIG = 1


def run_workers(settings: RouterSettings) -> int:
    """Serve with ``settings.workers`` processes until SIGTERM or SIGINT; the exit status."""
    if sys.platform == "win32":  # (the board's file lock, the workers' process groups)
        raise BadRequest("--workers needs Linux or macOS: run one router per port on Windows",
                         param="workers")  # fmt: skip
    sockets = listening_sockets(settings)
    state = Path(tempfile.mkdtemp(prefix="llmlb-workers-"))
    try:
        return _Supervisor(settings, sockets, state, print_listening).run()
    finally:
        shutil.rmtree(state, ignore_errors=True)
        for sock in sockets:
            sock.close()


class _Supervisor:
    def __init__(
        self, settings: RouterSettings, sockets: list[socket.socket], state: Path,
        announce: Callable[[str, list[socket.socket], RouterSettings], None],
    ) -> None:  # fmt: skip
        self.settings = settings
        self.sockets = sockets
        self.count = settings.workers
        # A provider's concurrency is the router's: each worker takes its share.
        share = max(1, settings.cloud_max_concurrency // self.count)
        self.worker_settings = settings.model_copy(update={"cloud_max_concurrency": share})
        self.metrics_dir = state / "metrics"
        self.metrics_dir.mkdir()
        self.board_path = state / "board"
        Board.create(self.board_path, self.count)
        self.board = Board(WorkerPlace(0, self.count, self.board_path))
        self.announce = announce
        self.stopping = threading.Event()
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, multiprocessing.process.BaseProcess] = {}
        self.started_at: dict[int, float] = {}
        # Each worker's "serving" event, held here until the worker is replaced: a spawned
        # child reads it as it starts, and one collected before that is gone for it.
        self.serving: dict[int, Event] = {}
        self.quick_deaths = 0

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)  # (the workers inherit)
        url = url_of(self.sockets[0], self.settings.tls_cert is not None)
        url_file = self.settings.home / ROUTER_URL_FILE
        try:
            # Worker 0 alone first (the schema, the node token, the first admin), then the rest.
            if not self._start_and_wait([0]) or not self._start_and_wait(range(1, self.count)):
                return 0 if self.stopping.is_set() else 1
            write_private(url_file, url + "\n")
            self.announce(url, self.sockets[1:], self.settings)
            log.info("%d router workers serving", self.count)
            return self._watch()
        finally:
            self._stop_all()
            self.board.close()
            with contextlib.suppress(OSError):
                if url_file.read_text().strip() == url:
                    url_file.unlink()

    def _on_signal(self, signum: int, frame: object) -> None:
        """The first stops every worker gracefully; a second, now (as uvicorn takes a second
        Ctrl-C)."""
        if self.stopping.is_set():
            for process in self.workers.values():
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(process.pid, signal.SIGINT)  # type: ignore[arg-type]
        self.stopping.set()

    def _start(self, index: int) -> Event:
        started = self.context.Event()
        place = WorkerPlace(index, self.count, self.board_path)
        process = self.context.Process(
            target=_worker_main, name=f"llmlb-router-{index}",
            args=(self.worker_settings, place, self.sockets, started),
        )  # fmt: skip
        process.start()
        self.workers[index] = process
        self.started_at[index] = time.monotonic()
        self.serving[index] = started
        return started

    def _start_and_wait(self, indexes: Iterable[int]) -> bool:
        """Start these workers and wait until each answers; False when one ended first (its
        error is in the log) or a stop came."""
        waiting = {index: self._start(index) for index in indexes}
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while waiting and time.monotonic() < deadline and not self.stopping.is_set():
            for index, started in list(waiting.items()):
                if started.wait(0.05):
                    del waiting[index]
                elif not self.workers[index].is_alive():
                    log.error("router worker %d ended as it started (status %s)",
                              index, self.workers[index].exitcode)  # fmt: skip
                    return False
        return not waiting

    def _watch(self) -> int:
        """Until a stop: a worker that died is started again in its place."""
        while not self.stopping.is_set():
            sentinels = {p.sentinel: i for i, p in self.workers.items()}
            for ended in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
                index = sentinels[ended]  # type: ignore[index]
                if self.stopping.is_set():
                    break
                process = self.workers[index]
                process.join()
                quick = time.monotonic() - self.started_at[index] < QUICK_DEATH_SECONDS
                self.quick_deaths = self.quick_deaths + 1 if quick else 0
                if self.quick_deaths >= MAX_QUICK_DEATHS:
                    log.error("router workers keep ending as they start (worker %d: status "
                              "%s); stopping", index, process.exitcode)  # fmt: skip
                    return 1
                log.warning("router worker %d (pid %s) ended with status %s; starting it again",
                            index, process.pid, process.exitcode)  # fmt: skip
                self.board.clear(index)
                _forget_metrics_of(process.pid, self.metrics_dir)
                self._start(index)
        return 0

    def _stop_all(self) -> None:
        alive = [p for p in self.workers.values() if p.is_alive()]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 10
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("router worker %s did not stop in time; killing it", process.name)
                process.kill()
                process.join()


def _forget_metrics_of(pid: int | None, directory: Path) -> None:
    """A dead worker's gauges leave the sums (its counters stay: what it counted happened)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def _worker_main(
    settings: RouterSettings, place: WorkerPlace, sockets: list[socket.socket], started: Event
) -> None:
    """A worker process: a router serving on the supervisor's sockets."""
    os.setpgid(0, 0)  # (a terminal's Ctrl-C is the supervisor's to pass on)
    _end_with_parent()
    configure_logging(settings.log_level, settings.log_format)

    def interrupt(signum: int, frame: object) -> None:  # uvicorn re-raises SIGTERM when done
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    from llmlb.router.server import run_router

    try:
        run_async(run_router(settings, lambda url, service: started.set(), place, sockets))
    except LlmlbError as exc:
        log.error("router worker %d: %s", place.index, exc.message)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


def _end_with_parent() -> None:
    """A supervisor killed outright (SIGKILL) takes its workers with it (Linux), even one
    that died as this worker started."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        sys.exit(0)
