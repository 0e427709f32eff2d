"""A node of our own for network tests: the node agent's networking lives in a network namespace
made for the test, joined to an "outside" namespace (another host, the internet) by a veth pair.
Nothing touches the host's own interfaces or tables.

    outside ns  192.0.2.2/24 (+ 169.254.169.254, a metadata-like address)
        | veth
    node ns     192.0.2.1/24, hutch's bridges, TAPs and veths, nftables
"""

import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hutch.model.network import Attachment

BUSYBOX = "/bin/busybox"
NODE_IP = "192.0.2.1"
OUTSIDE_IP = "192.0.2.2"
METADATA_IP = "169.254.169.254"


HTTP_GET = r"printf 'GET / HTTP/1.0\r\n\r\n'"


def http_body(response: str) -> str | None:
    """The body of an HTTP 200 response, or None for anything else (nothing, a refusal)."""
    head, sep, body = response.replace("\r\n", "\n").partition("\n\n")
    return body if sep and head.startswith("HTTP/1.") and " 200 " in head else None


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def attachment(vni: int, host: int, **kw: object) -> Attachment:
    """Host `host` of network `vni`: 10.77.<vni>.<host>/24, fd77:0:0:<vni>::<host>/64."""
    return Attachment(
        network_id=f"net-{vni}",
        vni=vni,
        mac=f"02:00:00:00:{vni:02x}:{host:02x}",
        ip4=f"10.77.{vni}.{host}",
        prefix4=24,
        gateway4=f"10.77.{vni}.1",
        ip6=f"fd77:0:0:{vni:x}::{host:x}",
        prefix6=64,
        gateway6=f"fd77:0:0:{vni:x}::1",
        dns=(f"10.77.{vni}.1",),
        search=("test.internal",),
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class Topology:
    node: str  # netns names under /run/netns
    outside: str
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def node_path(self) -> Path:
        return Path("/run/netns") / self.node

    def run(
        self, netns: str | Path, *args: str, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """A command in a namespace (a name under /run/netns or a path)."""
        path = netns if isinstance(netns, Path) else Path("/run/netns") / netns
        return subprocess.run(
            ["nsenter", f"--net={path}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, netns: str | Path, *args: str) -> bool:
        return self.run(netns, *args).returncode == 0

    def serve_http(self, netns: str | Path, address: str, port: int, body: str) -> None:
        """busybox httpd answering `body` at http://address:port/ in `netns`."""
        root = Path(f"/tmp/hutch-nettest-{os.getpid()}-{len(self.servers)}")
        root.mkdir(exist_ok=True)
        (root / "index.html").write_text(body)
        path = netns if isinstance(netns, Path) else Path("/run/netns") / netns
        self.servers.append(
            subprocess.Popen(
                [
                    "nsenter",
                    f"--net={path}",
                    BUSYBOX,
                    "httpd",
                    "-f",
                    "-p",
                    f"{address}:{port}",
                    "-h",
                    str(root),
                ],
            )
        )
        probe = "127.0.0.1" if address == "0.0.0.0" else address
        for _ in range(100):
            if self.get(netns, probe, port) == body:
                return
            time.sleep(0.05)
        raise AssertionError(f"httpd on {address}:{port} did not answer")

    def get(self, netns: str | Path, address: str, port: int) -> str | None:
        """The body at http://address:port/ from `netns`, or None if nothing answered."""
        # busybox nc, not wget: Debian's static busybox wget crashes (glibc resolver, static).
        out = self.run(netns, "sh", "-c", f"{HTTP_GET} | {BUSYBOX} nc -w 2 {address} {port}")
        return http_body(out.stdout)

    def ping(self, netns: str | Path, address: str) -> bool:
        return self.ok(netns, BUSYBOX, "ping", "-c", "1", "-W", "2", address)

    def close(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()
        for i in range(len(self.servers)):
            shutil.rmtree(f"/tmp/hutch-nettest-{os.getpid()}-{i}", ignore_errors=True)
        for ns in (self.node, self.outside):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def topology() -> Iterator[Topology]:
    tag = f"nt{os.getpid() % 10000}{random.randrange(1000)}"
    topo = Topology(node=f"{tag}n", outside=f"{tag}o")
    try:
        for ns in (topo.node, topo.outside):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", topo.node, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
           "netns", topo.outside)  # fmt: skip
        sh("ip", "-n", topo.node, "addr", "add", f"{NODE_IP}/24", "dev", "up0")
        sh("ip", "-n", topo.node, "link", "set", "up0", "up")
        sh("ip", "-n", topo.outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "up1")
        sh("ip", "-n", topo.outside, "addr", "add", f"{METADATA_IP}/16", "dev", "up1")
        sh("ip", "-n", topo.outside, "link", "set", "up1", "up")
        # The node routes 169.254/16 to "outside" too, as a cloud VM's host would.
        sh("ip", "-n", topo.node, "route", "add", "169.254.0.0/16", "via", OUTSIDE_IP)
        yield topo
    finally:
        topo.close()
