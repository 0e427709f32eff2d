"""Security group rule change to enforcement, end to end: from the API call to a running
container's published port closing (rule removed) or answering again (rule added back), seen
from the node itself. Quiet, then while the node starts and removes other containers.

`hutch up` runs in a network namespace of its own (this script re-runs itself there), so other
hutch instances on the host cannot touch its links and tables. In one run:
  quiet_close_p50_s, quiet_close_max_s, quiet_open_p50_s, quiet_open_max_s
  churn_close_p50_s, churn_close_max_s, churn_open_p50_s, churn_open_max_s
where close is the start of the first of CLOSED probes in a row unanswered (0.5 s each) after
the removal's call began, open the first answer after the addition's call began (the port
closed for sure before it); churn starts and removes CHURN containers every
few seconds meanwhile. The last line printed is one JSON object with the figures.

    .venv/bin/python -m bench.rules [--runs N]  (from the repo root, as root)
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import hutch
from bench.up import free_port, hutch_env, hutch_up

CHURN = 4  # containers started, then removed, in each churn cycle
CLOSED = 4  # probes in a row without an answer (0.5 s each): the port is closed
CLOSED_PROBE = 0.5  # seconds a probe waits for an answer while the port should close
OPEN_PROBE = 0.1  # and while it should open
SERVE = (
    "mkdir -p /tmp/w && echo hello-from-web > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"
)
NETNS_ENV = "HUTCH_BENCH_NETNS"


def answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.settimeout(timeout)
            return b"hello-from-web" in s.recv(4096)
    except OSError:
        return False


def until(want: bool, port: int, start: float, limit: float = 60.0) -> float:
    """Seconds from `start` to the beginning of the first probe that finds the port `want`:
    open at the first answer; closed at the first of CLOSED probes in a row without one (so a
    loaded node's slow answer is not taken for a closed port: were it, the next addition
    would seem to take no time)."""
    first: float | None = None
    streak = 0
    while time.monotonic() - start < limit:
        probe = time.monotonic()
        # Waiting for it to open, short probes: a SYN dropped just before the change is only
        # sent again after a second, so one long probe would measure its own timeout.
        if answers(port, OPEN_PROBE if want else CLOSED_PROBE) == want:
            first = probe if streak == 0 else first
            streak += 1
            if want or streak == CLOSED:
                assert first is not None
                return first - start
        else:
            streak = 0
        time.sleep(0.01)
    raise RuntimeError(f"the port never became {'open' if want else 'closed'}")


def toggles(client: hutch.Client, port: int, rule: str, runs: int) -> tuple[list[float], ...]:
    closes: list[float] = []
    opens: list[float] = []
    for _ in range(runs):
        start = time.monotonic()
        client.security_groups.remove_rule("web", rule)
        closes.append(until(False, port, start))
        start = time.monotonic()
        rule = (
            client.security_groups.add_rule("web", "ingress", "tcp", 8080, "0.0.0.0/0").rules[-1].id
        )
        opens.append(until(True, port, start))
        time.sleep(0.5)
    return closes, opens


def churn(url: str, token: str, stop: threading.Event) -> None:
    with hutch.Client(url, token, project="default") as client:
        while not stop.is_set():
            name = f"c-{uuid.uuid4().hex[:8]}"
            made = [
                client.machines.create(
                    "busybox", ["sleep", "60"], runtime="container", name=f"{name}-{i}"
                )
                for i in range(CHURN)
            ]
            stop.wait(3.0)
            for m in made:
                client.machines.delete(m, force=True)


def measure(url: str, token: str, runs: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with hutch.Client(url, token, project="default") as client:
        client.security_groups.create("web")
        rule = client.security_groups.add_rule("web", "ingress", "tcp", 8080, "0.0.0.0/0")
        port = free_port()
        client.machines.run("busybox", ["sh", "-c", SERVE], name="web", runtime="container",
                            ports=[f"{port}:8080"], security_groups=["web"])  # fmt: skip
        until(True, port, time.monotonic())
        rule_id = rule.rules[-1].id
        for phase in ("quiet", "churn"):
            stop = threading.Event()
            load = threading.Thread(target=churn, args=(url, token, stop), daemon=True)
            if phase == "churn":
                load.start()
                time.sleep(3.0)
            try:
                closes, opens = toggles(client, port, rule_id, runs)
            finally:
                stop.set()
                if load.is_alive():
                    load.join(60)
            rule_id = client.security_groups.get("web").rules[-1].id
            for name, xs in (("close", closes), ("open", opens)):
                figures[f"{phase}_{name}_p50_s"] = round(statistics.median(xs), 3)
                figures[f"{phase}_{name}_max_s"] = round(max(xs), 3)
            print(f"{phase}: close median {statistics.median(closes):.3f} s, max "
                  f"{max(closes):.3f} s; open median {statistics.median(opens):.3f} s, max "
                  f"{max(opens):.3f} s", file=sys.stderr)  # fmt: skip
        # Sandboxes outlive `hutch up` (a restarted agent adopts them): none is left behind.
        client.machines.delete("web", force=True)
        client.machines.wait("web", "destroyed", timeout=60)
    return figures


def in_own_netns() -> None:
    """Re-run this script inside a fresh network namespace (removed after)."""
    name = f"hbr-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        # nsenter, not `ip netns exec`: that mounts a fresh /sys, hiding the cgroup hierarchies.
        argv = ["nsenter", f"--net=/var/run/netns/{name}", sys.executable, "-m", "bench.rules"]
        env = {**os.environ, NETNS_ENV: name}
        rc = subprocess.run([*argv, *sys.argv[1:]], env=env, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    sys.exit(rc)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if not os.environ.get(NETNS_ENV):
        in_own_netns()
    work = Path(tempfile.mkdtemp(prefix="hbr", dir="/tmp"))
    env = hutch_env(work)
    try:
        with hutch_up(env) as (url, token):
            figures = measure(url, token, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({**figures, "runs": args.runs, "churn": CHURN, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
