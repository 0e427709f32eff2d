"""Networks across nodes, through the CLI: a controller and three agents each in a network
namespace of its own (tests/helpers/cluster.py), machines pinned to nodes by label, real
micro-VMs and containers on real bridges, VXLAN between the agents' namespaces (UDP 4789 over
the bridge that joins them). Every denial sits next to the same probe succeeding where it is
allowed.

    node-a: web-a   (project alpha, container)  httpd :8080, UDP echo :9000
    node-b: vm-b    (project alpha, micro-VM)   httpd :8080 published on node-b, UDP echo :9000
            spy-b   (project beta,  micro-VM)   a prober of another project
    node-c: nothing: the "elsewhere" the published port is reached from; its agent joins
            after the machines run (the others block its address from their next answer)
"""

import http.server
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.controller import BUSYBOX_CONFIG
from tests.helpers import free_port
from tests.helpers.cli import HUTCH
from tests.helpers.cluster import Cluster, Net, cluster, in_netns, sh, until
from tests.images.ocibuild import write_oci_layout

pytestmark = pytest.mark.timeout(300)

PROBE_SOURCE = Path(__file__).parents[1] / "helpers" / "udpprobe.c"
SERVE = (
    "mkdir -p /tmp/w; echo hello-from-$WHO > /tmp/w/index.html; "
    "udpprobe serve 9000 & exec httpd -f -p 8080 -h /tmp/w"
)
RESOLVE = "nslookup -timeout=2 {} | sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p' | tail -1"
GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} {}"
BUSYBOX_GET = GET.replace("nc", "busybox nc")  # on the host (no nc of its own)

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def probe_image(busybox_rootfs: Path, short_dir: Path) -> Path:
    """An OCI layout: busybox plus /bin/udpprobe (static)."""
    layer = short_dir / "layer"
    (layer / "bin").mkdir(parents=True)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(layer / "bin" / "udpprobe"),
                    str(PROBE_SOURCE)], check=True, capture_output=True)  # fmt: skip
    layout = short_dir / "probe"
    write_oci_layout(layout, [busybox_rootfs, layer], BUSYBOX_CONFIG)
    return layout


@pytest.fixture
def bystander(net: Net) -> Iterator[tuple[str, int]]:
    """An HTTP server of the test's on another address of the bridge the controller listens on
    (a host of the underlay that is not the cluster's): what a machine reaches by NAT, next to
    the controller it must not reach."""
    address = net.prefix + "2"
    sh("ip", "addr", "add", f"{address}/24", "dev", f"{net.tag}br")

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello-from-bystander\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield address, int(server.server_address[1])
    server.shutdown()
    server.server_close()


def runner(c: Cluster, project: str) -> Run:
    env = {**c.env, "HUTCH_URL": c.url, "HUTCH_TOKEN": c.secret, "HUTCH_PROJECT": project}

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HUTCH, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )

    return run


def test_networks_across_nodes(
    net: Net,
    hutch_env: dict[str, str],
    short_dir: Path,
    probe_image: Path,
    bystander: tuple[str, int],
) -> None:
    c = cluster(net, hutch_env, short_dir, labels=lambda name: (f"node={name}",))
    try:
        admin = c.up()
        c.start(c.agents[:2])  # node-c joins later
        admin.images.import_(probe_image, names=["probe"], public=True)
        for project in ("alpha", "beta"):
            admin.projects.create(project)
        alpha, beta = runner(c, "alpha"), runner(c, "beta")
        published = free_port()
        for run, name, node, runtime, extra, argv in (
            (alpha, "web-a", "a", "container", (), ("sh", "-c", SERVE)),
            (alpha, "vm-b", "b", "microvm", ("-p", f"{published}:8080"), ("sh", "-c", SERVE)),
            (beta, "spy-b", "b", "microvm", (), ("sleep", "3600")),
        ):
            ran = run("run", "-d", "--name", name, "--runtime", runtime, "-e", f"WHO={name}",
                      "--constraint", f"node={node}", *extra, "probe", "--", *argv)  # fmt: skip
            assert ran.returncode == 0, (name, ran.stderr, c.logs)
        nodes = {n.name: n for n in admin.nodes.list()}
        for run, name, node in ((alpha, "web-a", "node-a"), (alpha, "vm-b", "node-b"),
                                (beta, "spy-b", "node-b")):  # fmt: skip
            assert json.loads(run("inspect", name).stdout)["node"] == nodes[node].id, name
        nic = {name: json.loads(run("inspect", name).stdout)["addresses"][0]
               for run, name in ((alpha, "web-a"), (alpha, "vm-b"), (beta, "spy-b"))}  # fmt: skip
        ip = {name: a["ip4"] for name, a in nic.items()}
        vni = json.loads(alpha("network", "inspect", "default").stdout)["vni"]
        address = {a.name: a.address for a in c.agents}  # each node's (underlay) address
        ns = {a.name: a.ns for a in c.agents}

        def inside(run: Run, machine: str, script: str) -> subprocess.CompletedProcess[str]:
            return run("exec", machine, "--", "sh", "-c", script)

        def get(run: Run, machine: str, host: str, port: int = 8080) -> str:
            return inside(run, machine, GET.format(host, port)).stdout

        def reaches(run: Run, machine: str, host: str, who: str) -> set[str]:
            """What gets through from `machine` to `who`'s servers at `host` (an address, or a
            name resolved first): one exec, TCP (httpd), UDP (udpprobe), ICMP (ping)."""
            script = (
                f"a={host}; case $a in [0-9]*) ;; *) a=$({RESOLVE.format(host)});; esac; "
                f"{GET.format('$a', 8080)} | grep -q hello-from-{who} && echo tcp; "
                f"udpprobe ask $a 9000 hi | grep -q 'echo hi' && echo udp; "
                "ping -c 1 -W 2 $a >/dev/null 2>&1 && echo icmp; true"
            )
            return set(inside(run, machine, script).stdout.split())

        # 1. Across the overlay, within the project: by address and by name, TCP, UDP and ICMP,
        # both ways (a micro-VM on node-b and a container on node-a).
        # (polled: the peers reach each node with its next assignments answer)
        until("vm-b reaches web-a over the overlay",
              lambda: "hello-from-web-a" in get(alpha, "vm-b", ip["web-a"]), 60,
              logs=c.logs)  # fmt: skip
        assert (
            inside(alpha, "vm-b", RESOLVE.format("web-a.alpha.internal")).stdout.strip()
            == ip["web-a"]
        )
        assert reaches(alpha, "vm-b", "web-a.alpha.internal", "web-a") == {"tcp", "udp", "icmp"}
        assert reaches(alpha, "vm-b", ip["web-a"], "web-a") == {"tcp", "udp", "icmp"}
        until("web-a reaches vm-b", lambda: "hello-from-vm-b" in get(alpha, "web-a", ip["vm-b"]))
        # (a container has no raw socket for busybox's ping)
        assert reaches(alpha, "web-a", "vm-b", "vm-b") == {"tcp", "udp"}

        # 2. Another project's machine, on the node of the one that gets through: nothing, by
        # any protocol, and the name is not its to resolve.
        # it runs (a micro-VM under TCG may still be booting: `run -d` does not wait for it),
        until("spy-b runs", lambda: inside(beta, "spy-b", "true").returncode == 0, 60, logs=c.logs)
        # and yet...
        assert reaches(beta, "spy-b", ip["web-a"], "web-a") == set()
        assert inside(beta, "spy-b", RESOLVE.format("web-a.alpha.internal")).stdout.strip() == ""
        # ...while its node's other machine, the same probes, still gets through
        assert reaches(alpha, "vm-b", ip["web-a"], "web-a") == {"tcp", "udp", "icmp"}

        # Nor can it speak VXLAN to node-a itself (UDP 4789, by its node's NAT): a frame for
        # web-a, as if from vm-b, in alpha's VNI. The very same packet from node-b (a peer, as
        # the overlay is) gets there: web-a prints what it receives.
        def inject(text: str) -> list[str]:
            return ["udpprobe", "vxlan", address["node-a"], str(vni), nic["web-a"]["mac"],
                    nic["vm-b"]["mac"], ip["vm-b"], ip["web-a"], "9000", text]  # fmt: skip

        for _ in range(3):
            assert beta("exec", "spy-b", "--", *inject("from-spy-b")).returncode == 0
        node_b = in_netns(ns["node-b"], str(probe_image.parent / "layer" / "bin" / "udpprobe"),
                          *inject("from-node-b")[1:])  # fmt: skip
        assert node_b.returncode == 0, node_b
        until("node-b's VXLAN packet at web-a",
              lambda: "got from-node-b" in alpha("logs", "web-a").stdout, 30)  # fmt: skip
        assert "from-spy-b" not in alpha("logs", "web-a").stdout

        # 3. The controller's API and the node's agent API: not from a machine (micro-VM or
        # container), though the node's namespace reaches both, and the machine reaches another
        # host on the controller's bridge by NAT.
        c.start(c.agents[2:])
        nodes = {n.name: n for n in admin.nodes.list()}
        controller = urlsplit(c.url)
        for node, machine in (("node-b", "vm-b"), ("node-a", "web-a")):
            agent = urlsplit(nodes[node].address)
            for host, port in ((controller.hostname, controller.port),
                               (agent.hostname, agent.port)):  # fmt: skip
                assert host and port
                from_node = in_netns(ns[node], "sh", "-c", BUSYBOX_GET.format(host, port))
                assert from_node.stdout.startswith("HTTP/1."), (node, host, from_node)
                said = get(alpha, machine, host, port)
                assert "HTTP/" not in said, (machine, host, port, said)
            assert "hello-from-bystander" in get(alpha, machine, *bystander)

        def kept_from(machine: str, host: str, port: int) -> Callable[[], bool]:
            return lambda: "HTTP/" not in get(alpha, machine, host, port)

        # Nor any other node of the cluster, through its node's NAT: not node-a's agent API
        # from vm-b, not node-b's from web-a, though each node's namespace reaches the other's,
        # nor node-c's, which joined after the machines started (blocked from the next answer,
        # the machines left running).
        for node, machine, others in (("node-b", "vm-b", ("node-a", "node-c")),
                                      ("node-a", "web-a", ("node-b", "node-c"))):  # fmt: skip
            for other in others:
                agent = urlsplit(nodes[other].address)
                host, port = agent.hostname, agent.port
                assert host and port
                from_node = in_netns(ns[node], "sh", "-c", BUSYBOX_GET.format(host, port))
                assert from_node.stdout.startswith("HTTP/1."), (node, other, from_node)
                until(f"{machine} is kept from {other}'s agent",
                      kept_from(machine, host, port), 30,
                      logs=c.logs)  # fmt: skip
            assert "hello-from-bystander" in get(alpha, machine, *bystander)
        # ...nor node-a's address by any protocol (ICMP from the micro-VM), while the
        # bystander answers the same ping.
        ping = "ping -c 1 -W 2 {} >/dev/null 2>&1 && echo icmp"
        assert inside(alpha, "vm-b", ping.format(address["node-a"])).stdout.strip() == ""
        assert inside(alpha, "vm-b", ping.format(bystander[0])).stdout.strip() == "icmp"

        # 4. The published port on node-b answers from node-c's namespace and from the test's,
        # at node-b's address.
        at_b = BUSYBOX_GET.format(address["node-b"], published)
        elsewhere = in_netns(ns["node-c"], "sh", "-c", at_b)
        assert "hello-from-vm-b" in elsewhere.stdout, elsewhere
        here = subprocess.run(["sh", "-c", at_b], capture_output=True, text=True, timeout=30,
                              check=False)  # fmt: skip
        assert "hello-from-vm-b" in here.stdout, here
    finally:
        c.tear_down()
