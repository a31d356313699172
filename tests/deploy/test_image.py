"""The container image (Dockerfile) as an operator runs it: built here over a base made from
Debian's packages (no registry), `llmlb up` inside it answering "Paris", unprivileged, its
state in the volume, healthy by its HEALTHCHECK, and a `docker stop` that lets the answer in
flight finish. The GPU variants (NVIDIA's and AMD's bases) are the same file with build
arguments; their bases cannot be fetched here, so they are linted, not built."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy import containers
from tests.deploy.containers import podman
from tests.support import wait_until

REPO = Path(__file__).resolve().parents[2]
QUESTION = {
    "model": "gemma-3-270m", "temperature": 0, "max_tokens": 16,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}  # fmt: skip
# Long enough to be under way when the stop comes: 120 tokens, whatever the model would say.
STORY = {"model": "gemma-3-270m", "prompt": "Once upon a time", "max_tokens": 120,
         "ignore_eos": True, "stream": True}  # fmt: skip


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    checked = subprocess.run([str(hadolint), "--config", str(REPO / ".hadolint.yaml"),
                              str(REPO / "Dockerfile")], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


class Container:
    """One container of the image, its router port published on loopback. `ask` runs a
    client inside it (loopback: no key needed, as for a user of `llmlb up` on their own
    machine); from the host, a client needs a key, as the README says."""

    def __init__(self, image: str, volume: str, *args: str) -> None:
        self.name = f"llmlb-test-{uuid.uuid4().hex[:8]}"
        # This test is about the image and its stop, on a machine whose cores may be busy:
        # there llama.cpp's spinning OpenMP threads crawl inside a container's cgroup (README
        # "Container image": 0.6 tokens/s against 41 with threads that sleep when idle).
        podman("run", "-d", "--name", self.name, "-v", f"{volume}:/var/lib/llmlb",
               "-e", "OMP_WAIT_POLICY=PASSIVE", "-p", "127.0.0.1::32768", image,
               *args)  # fmt: skip
        published = podman("port", self.name, "32768/tcp").stdout.strip().splitlines()[0]
        self.url = "http://" + published

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def ask(self, body: dict[str, object]) -> str:
        client = (
            "import sys, urllib.request\n"
            "request = urllib.request.Request('http://127.0.0.1:32768/v1/chat/completions',"
            " data=sys.argv[1].encode(), headers={'content-type': 'application/json'})\n"
            "print(urllib.request.urlopen(request, timeout=110).read().decode())\n"
        )
        return podman("exec", self.name, "python3", "-c", client, json.dumps(body),
                      timeout=120).stdout  # fmt: skip

    def key(self) -> str:
        made = podman("exec", self.name, "llmlb", "keys", "create", "test")
        return str(re.findall(r"llmlb_[\w-]+", made.stdout + made.stderr)[-1])

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"llmlb-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("volume", "rm", "-f", name, check=False)


def test_llmlb_up_in_the_image_answers_and_stops_by_draining(image: str, volume: str) -> None:
    box = Container(image, volume)  # the image's default command: `llmlb up`
    try:
        wait_until(lambda: "llmlb is up" in box.logs(), timeout=180, step=1)
        answer = json.loads(box.ask(QUESTION))
        assert "Paris" in answer["choices"][0]["message"]["content"]

        assert podman("exec", box.name, "id", "-u").stdout.strip() == "10001"
        assert podman("healthcheck", "run", box.name, check=False).returncode == 0
        version = podman("exec", box.name, "llmlb", "--version").stdout
        assert f"(commit {containers.commit()})" in version

        # `docker stop` while an answer streams to a client on the host: SIGTERM, and the
        # answer still ends whole (the client outside, so the container's end cannot cut it).
        headers = {"authorization": f"Bearer {box.key()}"}
        lines: list[str] = []
        with httpx.stream("POST", f"{box.url}/v1/completions", json=STORY, headers=headers,
                          timeout=120) as stream:  # fmt: skip
            assert stream.status_code == 200
            chunks = stream.iter_lines()
            lines.append(next(chunks))  # under way
            started = time.monotonic()
            stopping = threading.Thread(
                target=lambda: podman("stop", "-t", "45", box.name, timeout=90)
            )
            stopping.start()
            lines.extend(line for line in chunks if line)
        stopping.join(90)
        stopped_in = time.monotonic() - started
        assert lines[-1] == "data: [DONE]", lines[-3:]
        reasons = re.findall(r'"finish_reason":\s*"(\w+)"', "\n".join(lines))
        assert reasons == ["length"], lines[-3:]  # all 120 tokens
        state = json.loads(podman("inspect", box.name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, box.logs()  # not 137: nothing was killed
        assert stopped_in < 45
    finally:
        box.remove()

    # The state stayed in the volume: a new container of it keeps the node token and database.
    listed = podman("run", "--rm", "-v", f"{volume}:/var/lib/llmlb", "--entrypoint", "ls",
                    image, "/var/lib/llmlb").stdout.split()  # fmt: skip
    assert {"llmlb.db", "node_token", "models"} <= set(listed)
