"""Hosts on a network of their own, for the tests of network faults (tests/network).

Each host is a Linux network namespace with one interface, ``eth0``, on a private subnet that
exists only inside the lab: 10.213.<lab>.0/24. The hosts' cables end on one bridge, in a
namespace of its own (the switch), so nothing of the lab is on the machine's own network
except the test runner's cable (10.213.<lab>.1), through which the test reaches every host.

- ``cut(host)``: the host's cable out of the switch (it reaches no one, no one reaches it);
  ``mend(host)`` puts it back.
- ``block(a, b)``: nftables in ``a`` drops everything between ``a`` and ``b``, both ways (a
  partition of two hosts that still see the others); ``unblock(a, b)``.
- ``start(host, args)``: ``llmlb ARGS`` on that host (``ip netns exec``).

Everything a lab makes goes when it closes, the namespaces with their cables, also when the
test failed; ``sweep()`` removes any lab an earlier run left (a killed test session).
Needs root (namespaces, veth, nftables), which the machines here and CI have.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import Process

PREFIX = "llmlbnet"  # every namespace a lab makes starts so (sweep() finds leftovers by it)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def missing() -> str | None:
    """Why labs cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (make test installs iproute2 and nftables)"
    return None


def sweep() -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    port: str  # its cable's end in the switch
    processes: list[Process] = field(default_factory=list)


class Lab:
    def __init__(self) -> None:
        self.net = random.randint(2, 250)
        self.tag = f"{self.net:02x}{random.randint(0, 0xFFF):03x}"
        self.switch = f"{PREFIX}-{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        self._blocked: set[tuple[str, str]] = set()
        _ip("netns", "add", self.switch)
        try:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            # The runner's cable: its end here, in the machine's own namespace.
            self.runner_address = self.address(1)
            self._cable(None, f"lr{self.tag}", f"lp{self.tag}", self.address(1))
        except BaseException:
            self.close()
            raise

    def address(self, host_number: int) -> str:
        return f"10.213.{self.net}.{host_number}"

    def _cable(self, namespace: str | None, inside: str, port: str, address: str) -> None:
        _ip("link", "add", inside, "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        where = ["-n", namespace] if namespace else []
        if namespace:
            _ip("link", "set", inside, "netns", namespace)
            _ip(*where, "link", "set", inside, "name", "eth0")
            inside = "eth0"
            _ip(*where, "link", "set", "lo", "up")
        _ip(*where, "addr", "add", f"{address}/24", "dev", inside)
        _ip(*where, "link", "set", inside, "up")

    def host(self, name: str) -> Host:
        number = len(self.hosts) + 2
        namespace = f"{PREFIX}-{self.tag}-{name}"
        _ip("netns", "add", namespace)
        port = f"p{self.tag}{number}"
        self._cable(namespace, f"h{self.tag}{number}", port, self.address(number))
        host = Host(name, namespace, self.address(number), port)
        self.hosts[name] = host
        return host

    # -- faults ------------------------------------------------------------------------------

    def cut(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def mend(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.port, "up")

    def block(self, a: Host, b: Host) -> None:
        """Drop everything between a and b (both directions, filtered in a)."""
        rules = (
            "table inet llmlblab {\n"
            " chain input { type filter hook input priority 0; }\n"
            " chain output { type filter hook output priority 0; }\n"
            "}\n"
            f"add rule inet llmlblab input ip saddr {b.address} drop\n"
            f"add rule inet llmlblab output ip daddr {b.address} drop\n"
        )
        subprocess.run(["ip", "netns", "exec", a.namespace, "nft", "-f", "-"], input=rules,
                       text=True, check=True, capture_output=True, timeout=30)  # fmt: skip
        self._blocked.add((a.name, b.name))

    def unblock(self, a: Host, b: Host) -> None:
        subprocess.run(["ip", "netns", "exec", a.namespace, "nft", "flush", "table", "inet",
                        "llmlblab"], check=True, capture_output=True, timeout=30)  # fmt: skip
        self._blocked.discard((a.name, b.name))

    # -- processes ---------------------------------------------------------------------------

    def start(
        self, host: Host, args: list[str], home: Path, log: Path, env: dict[str, str] | None = None
    ) -> Process:
        """``llmlb ARGS`` on ``host``; the URL it announces for every interface (loopback's)
        is rewritten to the host's address, where others reach it."""
        process = Process(args, home, log, env or {},
                          prefix=["ip", "netns", "exec", host.namespace])  # fmt: skip
        for local in ("://0.0.0.0:", "://127.0.0.1:"):
            process.url = process.url.replace(local, f"://{host.address}:")
        host.processes.append(process)
        return process

    def close(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                process.stop(signal.SIGKILL, timeout=10)
        for namespace in [h.namespace for h in self.hosts.values()] + [self.switch]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        # (the runner's cable went with the switch: a veth goes when either end's namespace does)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
