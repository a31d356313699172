"""Helpers for tests that start real llmlb processes."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

_CLOUD_VARIABLE = re.compile(r"(LLMLB_)?(OPENAI|ANTHROPIC|GOOGLE)_(API_KEY|BASE_URL)")


class Process:
    """An ``llmlb`` subprocess on 127.0.0.1:0 that announces its URL on stdout."""

    def __init__(
        self, args: list[str], home: Path, log_path: Path, env: dict[str, str],
        python: str = sys.executable, module: str = "llmlb", prefix: list[str] | None = None,
    ) -> None:  # fmt: skip
        """``prefix``: what runs it (``ip netns exec NS``, which execs it: the same pid)."""
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        # A cloud key in the developer's environment must never reach a test's router: the
        # tests talk to loopback fakes only.
        inherited = {k: v for k, v in os.environ.items() if not _CLOUD_VARIABLE.fullmatch(k)}
        full_env = {**inherited, "LLMLB_HOME": str(home), "PYTHONUNBUFFERED": "1", **env}
        self.announced: list[str] = []  # what it printed up to its URL
        self.proc = subprocess.Popen(
            [*(prefix or []), python, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=full_env,
        )
        try:
            self.url = self._wait_for_url()
        except BaseException:
            self.stop(signal.SIGKILL)  # never leave a child behind that we gave up on
            raise

    def _wait_for_url(self, timeout: float = 90.0) -> str:
        """The URL from the child's "listening on" line; waits at most ``timeout`` seconds,
        whether or not the child writes anything (selectors, not a blocking readline)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        pending = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not selector.select(remaining):
                    break
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    self.proc.wait(5)
                    raise RuntimeError(f"process exited early:\n{self.log_tail()}")
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.announced.append(line.decode(errors="replace"))
                    if b" listening on " in line:
                        return line.decode().rsplit(" ", 1)[1].strip()
        raise RuntimeError(f"no URL announced within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class ThreadServer:
    """An ASGI app on 127.0.0.1:0, served by uvicorn on uvloop in a daemon thread (the
    loopback fakes of the hub and the clouds)."""

    def __init__(self, app: Any, port: int = 0) -> None:
        import asyncio

        import uvicorn
        import uvloop

        from llmlb.common.serving import bind, url_of

        sock = bind("127.0.0.1", port)
        self.url = url_of(sock)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self._server = server = uvicorn.Server(config)

        def run() -> None:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(server.serve(sockets=[sock]))

        threading.Thread(target=run, daemon=True).start()
        while not server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True


def start_node(
    home: Path, log_dir: Path, *extra: str, name: str = "node", env: dict[str, str] | None = None
) -> Process:
    args = ["node", "--host", "127.0.0.1", "--port", "0", "--allow-cpu", *extra]
    return Process(args, home, log_dir / f"{name}.log", env or {})


def llmlb(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI, run as a user runs it, with ``home`` as LLMLB_HOME."""
    return subprocess.run(
        [sys.executable, "-m", "llmlb", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "LLMLB_HOME": str(home), **(env or {})},
    )  # fmt: skip


def free_port() -> int:
    """A port that was free a moment ago (for processes that must come back on the same one)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_router(
    home: Path, log_dir: Path, *extra: str, port: int = 0, env: dict[str, str] | None = None,
    name: str = "router",
) -> Process:  # fmt: skip
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    return Process(args, home, log_dir / f"{name}.log", env or {})


def node_token(router_home: Path) -> str:
    return (router_home / "node_token").read_text().strip()


def start_fleet_node(
    model_home: Path, log_dir: Path, router: Process, router_home: Path, name: str,
    *extra: str, port: int = 0, env: dict[str, str] | None = None,
) -> Process:  # fmt: skip
    args = ["node", "--host", "127.0.0.1", "--port", str(port), "--allow-cpu",
            "--router", router.url, "--name", name, *extra]  # fmt: skip
    return Process(args, model_home, log_dir / f"{name}.log",
                   {"LLMLB_NODE_TOKEN": node_token(router_home), **(env or {})})  # fmt: skip


def write_tiny_gguf(path: Path, megabytes: int = 4, seed: int = 0) -> Path:
    """A small valid GGUF file (random tensor data) for download tests."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny {seed}")
    rng = np.random.default_rng(seed)
    writer.add_tensor("w", rng.random(megabytes * 262144, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def split_gguf(source: Path, folder: Path, stem: str, parts: int) -> list[Path]:
    """``source`` rewritten as a split GGUF of ``parts`` files, named as llama.cpp's
    gguf-split names them (``<stem>-00001-of-0000N.gguf``), in ``folder``."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    per_part = -(-len(reader.tensors) // parts)
    writer = GGUFWriter(folder / f"{stem}.gguf", arch, split_max_tensors=per_part)
    for name, item in reader.fields.items():
        if name.startswith(("GGUF.", "split.")) or name == "general.architecture":
            continue
        kind = item.types[0]
        sub_type = item.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(name, item.contents(), kind, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(
            tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [folder / f"{stem}-{i:05d}-of-{parts:05d}.gguf" for i in range(1, parts + 1)]


def ask_capital_of_france(http: httpx.Client, model: str) -> httpx.Response:
    """Ask ``model`` the suite's one question, greedily, and check that it says Paris."""
    reply = http.post(
        "/v1/chat/completions",
        json={"model": model, "max_tokens": 8, "temperature": 0,
              "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]
    return reply


def own_model_home(model_home: Path, where: Path) -> Path:
    """A home of its own at ``where`` whose store holds the small model (hard-linked from the
    session's ``model_home``): for a node a test distributes models to, so that they do not
    land in the store every other test's nodes share."""
    from llmlb.models.store import ModelStore

    shared = ModelStore(model_home / "models")
    for model in shared.list():
        ModelStore(where / "models").add(model.name, model.path, sha256=model.sha256,
                                         metadata=model.metadata)  # fmt: skip
    return where
