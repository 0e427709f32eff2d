"""Where the time of `hutch run --rm busybox -- echo hi` goes, hop by hop, against one `hutch up`
(SQLite) on this machine.

Each hop ends at a moment one clock on this host saw: the CLI's start, output and exit (this
script's clock), and the machine's own events (the controller's: created, placed; the node's
reports: starting, running, exited). The table gives each hop's p50 and p99 over N runs, after
one run that warms the image; the last line printed is one JSON object with the same figures.

    .venv/bin/python -m bench.trace [--runs N]   (from the repo root; `make bench` runs it)
"""

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.host import log
from bench.up import HUTCH, hutch_env, hutch_up
from hutch.client import Client
from hutch.model.errors import HutchError
from hutch.wire.machines import EventView

# Each hop: its name, and the moment it ends (the one before it is where it starts).
HOPS = (
    ("cli start, create", "created"),  # the CLI starts, reads its context, sends the create
    ("placement", "placed"),  # the leader's scheduler puts it on a node
    ("node pickup", "starting"),  # the node learns of it and reports it starting
    ("running reported", "running"),  # the node prepares its disks, starts QEMU, reports it
    ("boot, first output", "output"),  # the guest boots, runs it; its first line reaches the CLI
    ("exit reported", "exited"),  # the node reports its end
    ("cli exit", "cli exit"),  # the CLI sees the end and returns
)


def moments(events: list[EventView], machine: str) -> dict[str, float]:
    """When each of the machine's events happened (the first of each kind)."""
    seen: dict[str, float] = {}
    for e in events:
        if e.object != machine:
            continue
        key = {"machine.created": "created", "machine.placed": "placed"}.get(e.kind, e.state)
        seen.setdefault(key, e.time)
    return seen


def one_run(env: dict[str, str], events: list[EventView]) -> dict[str, float]:
    """The moments of one `hutch run --rm` (seconds since the CLI was started)."""
    start = time.time()
    cli = subprocess.Popen(
        [HUTCH, "run", "--rm", "busybox", "--", "echo", "hi"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert cli.stdout is not None
    first = cli.stdout.readline()
    output = time.time()
    _, err = cli.communicate()
    done = time.time()
    if first != b"hi\n" or cli.returncode != 0:
        raise RuntimeError(f"hutch run failed ({cli.returncode}): {first!r} {err.decode()}")
    deadline = time.monotonic() + 10  # the event stream lags the CLI by a little
    while True:
        # Runs go one at a time: this run's machine is the one created while its CLI ran.
        made = [e.object for e in events if e.kind == "machine.created" and start <= e.time]
        seen = moments(events, made[-1]) if made else {}
        if all(key in seen for key in ("created", "placed", "starting", "running", "exited")):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"events of this run's machine missing: only {sorted(seen)}")
        time.sleep(0.05)
    seen.update({"output": output, "cli exit": done})
    return {key: t - start for key, t in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hbt", dir="/tmp"))
    try:
        env = hutch_env(work)
        with hutch_up(env) as (url, token):
            events: list[EventView] = []
            client = Client(url, token, project="default")

            def follow() -> None:
                with contextlib.suppress(HutchError):  # the controller stops at the end
                    for e in client.events():
                        events.append(e)

            threading.Thread(target=follow, daemon=True).start()
            one_run(env, events)  # warms the image on the node and the CLI's imports
            runs = [one_run(env, events) for _ in range(args.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, dict[str, float]] = {}
    log(f"{'hop':<18} {'p50 ms':>8} {'p99 ms':>8}")
    begins = ("", *(end for _, end in HOPS[:-1]))
    for (name, end), begin in zip(HOPS, begins, strict=True):
        took = sorted(r[end] - (r[begin] if begin else 0.0) for r in runs)
        p50, p99 = statistics.median(took), took[min(len(took) - 1, round(0.99 * (len(took) - 1)))]
        figures[name] = {"p50_ms": round(p50 * 1000, 1), "p99_ms": round(p99 * 1000, 1)}
        log(f"{name:<18} {p50 * 1000:8.1f} {p99 * 1000:8.1f}")
    total = sorted(r["cli exit"] for r in runs)
    figures["total"] = {"p50_ms": round(statistics.median(total) * 1000, 1),
                        "p99_ms": round(total[-1] * 1000, 1)}  # fmt: skip
    log(f"{'total':<18} {figures['total']['p50_ms']:8.1f} {figures['total']['p99_ms']:8.1f}")
    print(json.dumps({"runs": args.runs, "hops": figures}))


if __name__ == "__main__":
    main()
