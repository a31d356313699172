"""Two more peers for the benchmarks: nginx (a plain reverse proxy, the floor any proxy is held
to) and SGLang's gateway (``sglang-router`` from PyPI, a Rust router with a cache-aware policy).

nginx is Debian's (``make bench-tools`` installs it); it runs one worker with keep-alive to the
upstream, as a tuned deployment would. The gateway is installed from PyPI into a virtualenv of
its own in the bench cache (``~/.cache/llmlb-bench/sglang-venv``), never in the repository. Both
are optional: a side whose peer cannot be installed is left out of the report, which says so.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from bench.procs import CACHE, install_venv

SGLANG_VENV = CACHE / "sglang-venv"
SGLANG_VERSION = "0.3.2"  # the release the issue measured

NGINX_CONF = """\
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/nginx.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {folder}/nginx-body;
  proxy_temp_path {folder}/nginx-proxy;
  upstream node {{ server 127.0.0.1:{upstream}; keepalive 512; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 10000000;
    location / {{
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def start_nginx(upstream_port: int, port: int, folder: Path) -> subprocess.Popen[bytes] | None:
    """nginx proxying 127.0.0.1:``port`` to the upstream; None when nginx is not installed."""
    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(executable).exists():
        return None
    config = folder / "nginx.conf"
    config.write_text(NGINX_CONF.format(folder=folder, upstream=upstream_port, port=port))
    process = subprocess.Popen([executable, "-c", str(config), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_listening(process, port, "nginx", folder / "nginx.log")
    return process


def install_sglang(log: Path) -> Path | None:
    """The gateway's executable, installing it when missing; None when that fails."""
    package = f"sglang-router=={SGLANG_VERSION}"
    return (
        SGLANG_VENV / "bin" / "sglang-router" if install_venv(SGLANG_VENV, package, log) else None
    )


def start_sglang(
    executable: Path, workers: list[str], port: int, folder: Path, policy: str,
    api_key: str = "",
) -> subprocess.Popen[bytes]:  # fmt: skip
    """The gateway on 127.0.0.1:``port`` in front of ``workers`` (base URLs) with ``policy``;
    ``api_key`` is what it sends the workers as a bearer token."""
    args = [str(executable), "launch", "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *workers, "--policy", policy, "--log-level", "warn",
            "--log-dir", str(folder / "sglang-logs")]  # fmt: skip
    if api_key:
        args += ["--api-key", api_key]
    log = folder / f"sglang-{policy}.log"
    process = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    _wait_listening(process, port, "SGLang's gateway", log, path="/readiness")
    return process


def _wait_listening(
    process: subprocess.Popen[bytes], port: int, name: str, log: Path, path: str = "/"
) -> None:
    """Until ``path`` answers anything but a refused connection (and, for a readiness path,
    a 200); the process is killed when it exits or does not answer within 120 s."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited; see {log}")
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
            if path == "/" or answer.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{name} did not start in 120 s; see {log}")
