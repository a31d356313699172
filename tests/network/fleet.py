"""A fleet placed on a lab's hosts: a router and its nodes, each on a host of its own, every
part listening on all interfaces and nodes advertising the address their router sees them at;
and a load of chat requests through the router, each one's outcome recorded."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trustme

from llmlb.models.smallmodel import SMALL_MODEL_NAME
from tests.netlab import Host, Lab
from tests.support import Process, wait_until

ADMIN = ("admin", "lab-admin-pass")
# Seconds between heartbeats: 2, not the 1 of loopback tests, since two nodes generating on a
# busy 2-core machine can miss three heartbeats of 1 s without being cut off.
HEARTBEAT = "2"
NODE_TOKEN = "lab-node-token-" + "0123456789abcdef" * 2  # (every router's, from its settings)


@dataclass
class Outcome:
    started: float
    ended: float
    status: int  # 0: no answer (a transport error)
    node: str


@dataclass
class Load:
    """``workers`` clients sending chat requests one after another until stopped."""

    url: str
    key: str
    verify: ssl.SSLContext | bool = True
    workers: int = 2
    timeout: float = 60.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for _ in range(self.workers):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _client(self) -> None:
        body = {"model": SMALL_MODEL_NAME, "max_tokens": 4,
                "messages": [{"role": "user", "content": "Name a colour."}]}  # fmt: skip
        headers = {"authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, timeout=self.timeout, headers=headers,
                          verify=self.verify) as http:  # fmt: skip
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = http.post("/v1/chat/completions", json=body)
                    status, node = answer.status_code, answer.headers.get("x-llmlb-node", "")
                except httpx.HTTPError:
                    status, node = 0, ""
                self.outcomes.append(Outcome(started, time.monotonic(), status, node))

    def served_by(self, node: str, after: float = 0.0) -> int:
        return sum(o.node == node and o.status == 200 and o.started >= after
                   for o in list(self.outcomes))  # fmt: skip

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 10)
        return self.outcomes


class Fleet:
    """``ca``: every part serves HTTPS with a certificate naming its host's address (from
    this CA, which every part and the test trust). ``database_url``: the routers' database
    (PostgreSQL on a host of its own, for ``routers`` > 1); nodes join every router."""

    def __init__(
        self, lab: Lab, home: Path, model_home: Path, *router_args: str,
        ca: trustme.CA | None = None, database_url: str | None = None, routers: int = 1,
    ) -> None:  # fmt: skip
        self.lab, self.home, self.model_home, self.ca = lab, home, model_home, ca
        self.verify: ssl.SSLContext | bool = True
        if ca is not None:
            ca.cert_pem.write_to_path(str(home / "ca.pem"))
            self.verify = ssl.create_default_context(cafile=str(home / "ca.pem"))
        env = {"LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_ADMIN_PASSWORD": ADMIN[1],
               "LLMLB_NODE_TOKEN": NODE_TOKEN}  # fmt: skip
        if ca is not None:
            env["LLMLB_TLS_CA"] = str(home / "ca.pem")
        if database_url is not None:
            env["LLMLB_DATABASE_URL"] = database_url
        self.routers: list[tuple[Host, Process]] = []
        for number in range(1, routers + 1):
            name = "router" if routers == 1 else f"router-{number}"
            host = lab.host(name)
            router_home = home if routers == 1 else home / name
            router_home.mkdir(exist_ok=True)
            process = lab.start(host, ["serve", "--host", "0.0.0.0", "--port", "0",
                                       "--allow-cpu-nodes", *router_args,
                                       *self.tls(name, host.address)],
                                router_home, home / f"{name}.log", env)  # fmt: skip
            self.routers.append((host, process))
        self.router_host, self.router = self.routers[0]
        self.nodes: dict[str, tuple[Host, Process]] = {}
        with self.admin() as http:
            made = http.post("/api/keys", json={"name": "lab", "scopes": ["api"]})
            made.raise_for_status()
            self.key = str(made.json()["secret"])

    def tls(self, part: str, *names: str) -> list[str]:
        """The TLS arguments of a part whose certificate names ``names`` ([] without a CA)."""
        if self.ca is None:
            return []
        issued = self.ca.issue_cert(*names)
        cert, key = self.home / f"{part}.pem", self.home / f"{part}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        trust = [] if part.startswith("router") else ["--tls-ca", str(self.home / "ca.pem")]
        return ["--tls-cert", str(cert), "--tls-key", str(key), *trust]

    def admin(self, router: int = 0) -> httpx.Client:
        url = self.routers[router][1].url
        return httpx.Client(base_url=url, timeout=30, auth=ADMIN, verify=self.verify)

    def add_node(
        self, name: str, *extra: str, port: int = 0, names: tuple[str, ...] = (),
        home: Path | None = None, router_url: str | None = None,
    ) -> Host:  # fmt: skip
        """A node on a host of its own (its store: ``home``, else the small model's); with a
        CA, its certificate names ``names`` (default: its host's address). ``router_url``:
        where it finds the router (a proxy's address, say)."""
        host = self.lab.host(name)
        process = self.lab.start(
            host, ["node", "--host", "0.0.0.0", "--port", str(port), "--allow-cpu", "--router",
                   router_url or ",".join(p.url for _, p in self.routers), "--name", name,
                   "--parallel", "1", "--threads", "1",
                   "--ctx-size", "512", *self.tls(name, *(names or (host.address,))), *extra],
            home or self.model_home, self.home / f"{name}.log",
            {"LLMLB_NODE_TOKEN": NODE_TOKEN},
        )  # fmt: skip
        self.nodes[name] = (host, process)
        return host

    def statuses(self, router: int = 0) -> dict[str, str]:
        with self.admin(router) as http:
            return {n["name"]: n["status"] for n in http.get("/api/nodes").json()["data"]}

    def wait_status(self, name: str, status: str, timeout: float = 60.0, router: int = 0) -> float:
        """When ``name`` reached ``status`` on a router (monotonic), waiting at most
        ``timeout``."""
        wait_until(lambda: self.statuses(router).get(name) == status, timeout, step=0.1)
        return time.monotonic()

    def wait_loaded(self, name: str, timeout: float = 60.0, router: int = 0) -> None:
        """Until ``name`` says in a heartbeat that it has the small model loaded."""

        def loaded() -> bool:
            with self.admin(router) as http:
                nodes = http.get("/api/nodes").json()["data"]
            return any(n["name"] == name and SMALL_MODEL_NAME in n["models_loaded"]
                       for n in nodes)  # fmt: skip

        wait_until(loaded, timeout, step=0.1)

    def load(self, workers: int = 2, router: int = 0) -> Load:
        return Load(self.routers[router][1].url, self.key, self.verify, workers).start()
