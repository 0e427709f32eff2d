"""The README's commands run as written, through a shell, against the real shared `hutch up`
(tests/controller.py): the lines are read from README.md itself, so an edit that breaks one fails
here. Example names are swapped for the test's own (registry.example.com for the registry this
test starts on 127.0.0.1), each block acts in a project of its own.

What runs here: "Running machines" and its lifetime lines (less `hutch up -d`, which the fixture
is, `hutch down`, which would stop it, and `exec -it` / `run -it`, which need a terminal: they run
on a pty in tests/cli/test_terminal.py and tests/cli/test_run_terminal.py), the `--dry-run`
example, the `login` / `context` lines, the "Images" block and the "Networks" block (micro-VMs;
curl to the published port, nslookup of a machine's name in its network), the "Suspend, resume
and snapshots" block (one micro-VM booted, one restored from its snapshot), the "Warm pools"
block (a template booted, pooled machines restored, one taken by a run), the "Usage and
invoices" block (its price book, a fresh project's usage, invoices, budget, credit). Elsewhere:
"Projects, tokens and quotas" in tests/cli/test_projects.py, the SDK example in
tests/client/test_readme.py.

What cannot run on one machine keeps only the `--help` check of tests/cli/test_readme.py: the
cluster's `hutch controller --listen 0.0.0.0:7878 --tls` over PostgreSQL, `hutch agent` joining
`ctl.example.net` from another host, and the `hutch node` lines about its node `rack1-07`
(tests/cli/test_nodes.py and tests/cli/test_cluster.py run those commands on nodes of their own).
"""

import json
import os
import re
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.images.build import write_archive
from tests.cli.test_rootfs import debootstrap_like
from tests.controller import BUSYBOX_CONFIG, Controller, controller, new_project
from tests.helpers import free_port
from tests.helpers.cli import HUTCH, Hutch
from tests.images.ocibuild import write_oci_layout
from tests.images.registry_server import Registry

__all__ = ["controller"]  # the session fixture, for the tests here

README = Path(__file__).parents[2] / "README.md"
Shell = Callable[..., subprocess.CompletedProcess[str]]


def block(heading: str, first_line: str) -> list[str]:
    """The commands of the sh block under `heading` whose first line starts with `first_line`:
    one per line (continuations joined), comments kept (the shell drops them)."""
    section = README.read_text().split(f"\n{heading}\n", 1)[1]
    for found in re.findall(r"```sh\n(.*?)```", section, re.S):
        if found.startswith(first_line):
            return [line for line in found.replace("\\\n", " ").splitlines() if line.strip()]
    raise AssertionError(f"no sh block starting {first_line!r} under {heading!r}")


def split(line: str) -> list[str]:
    """`a; b; c  # comment` as its commands (the README separates a few with `;`)."""
    code = line.split("  #", 1)[0]
    return [part.strip() for part in code.split("; ") if part.strip()]


@pytest.fixture
def env(controller: Controller) -> dict[str, str]:
    """The controller's `local` context, in a fresh project, with `hutch` on the PATH."""
    return {
        **controller.env,
        "HUTCH_PROJECT": new_project(controller, "readme"),
        "PATH": f"{Path(HUTCH).parent}:{os.environ['PATH']}",
    }


@pytest.fixture
def sh(env: dict[str, str], tmp_path: Path) -> Shell:
    def run(command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip

    return run


def ok(ran: subprocess.CompletedProcess[str], command: str) -> str:
    assert ran.returncode == 0, f"{command}: {ran.returncode} {ran.stderr}"
    return ran.stdout


ON_A_TERMINAL = {"hutch exec -it web -- sh", "hutch run -it --rm busybox sh"}  # pty tests
NOT_HERE = {"hutch up -d", "hutch down"}  # the fixture is `hutch up`; down would stop it


def test_the_running_machines_block_runs_as_written(
    sh: Shell, env: dict[str, str], tmp_path: Path
) -> None:
    commands = [c for line in block("## Running machines", "hutch up -d") for c in split(line)]
    assert set(commands) >= ON_A_TERMINAL | NOT_HERE
    follower: subprocess.Popen[str] | None = None
    seen = []
    for written in commands:
        if written in ON_A_TERMINAL | NOT_HERE:
            continue
        seen.append(written)
        command = written.replace("/tmp/bb", str(tmp_path / "bb"))  # this test's own
        if command.startswith("hutch logs -f"):  # follows until web ends: run alongside
            follower = subprocess.Popen(
                ["bash", "-c", command], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            continue
        out = ok(sh(command), command)
        if command.startswith("python -m hutch.images.busybox"):
            assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", out), out  # the imported image
        elif command == "hutch run busybox -- echo hello":
            assert out == "hello\n"
        elif command.startswith("hutch run -d --name web"):
            assert re.fullmatch(r"m-\w+\n", out)
            wait_until_running(sh)
        elif command == "hutch ps":
            assert re.search(r"\sweb\s+busybox\s+microvm\s+running", out), out
        elif command.startswith("hutch exec web -- uname -a"):
            assert out.startswith("Linux ")
        elif "sort -r" in command:
            assert out == "b\na\n"
        elif command == "hutch stop web":
            assert out == "web\n"
            assert follower is not None
            followed = follower.communicate(timeout=60)  # ended with web
            assert follower.returncode == 0, followed[1]
            assert ok(sh("hutch logs -n 20 web"), "logs -n 20") == followed[0]
        elif command == "hutch kill -s HUP web":
            assert out == "web\n"
        elif command == "hutch wait web":
            assert out == "129\n"  # httpd's end by SIGHUP: 128 + 1
        elif command == "hutch inspect web":
            machine = json.loads(out)
            assert (machine["name"], machine["memory_mib"]) == ("web", 256)
            assert machine["env"] == {"MODE": "prod"}
        elif command == "hutch rm web":
            assert out == "web\n"
            assert "web" not in ok(sh("hutch ps -a -q"), "ps") + ok(sh("hutch ps"), "ps")
    assert len(seen) == 14 and follower is not None, seen


def test_the_lifetime_lines_run_as_written(sh: Shell) -> None:
    commands = block("## Running machines", "hutch run -d --name job --timeout")
    run, extend = (split(line)[0] for line in commands)
    assert re.fullmatch(r"m-\w+\n", ok(sh(run), run))
    # 30 minutes (less what it ran already) and an hour more
    assert re.fullmatch(r"job: 1h(30m|29m\d+s) left\n", ok(sh(extend), extend))
    job = json.loads(ok(sh("hutch inspect job"), "inspect"))
    assert (job["timeout_s"], job["on_timeout"], job["extended_s"]) == (1800, "destroy", 3600)
    assert re.search(r"\sjob\s.*\(1h\d+m(\d+s)? left\)", ok(sh("hutch ps"), "ps"))
    ok(sh("hutch rm -f job"), "rm")


def wait_until_running(sh: Shell) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if json.loads(ok(sh("hutch inspect web"), "inspect"))["state"] == "running":
            return
        time.sleep(0.3)
    raise AssertionError("web did not start")


def test_the_dry_run_example_runs_as_written(sh: Shell, controller: Controller) -> None:
    """On this one node, which lacks the label: the same command, and the same node with it."""
    [command, *answer] = block("## A cluster: many nodes, several controllers", "hutch run --dry")
    assert answer[0].startswith("# would run on node")
    refused = sh(command)
    assert refused.returncode == 125
    assert refused.stdout.splitlines()[0] == "no node can take it now"
    assert "lacks labels disk=ssd" in refused.stdout
    nodes = json.loads(ok(sh("hutch node ls -o json"), "node ls"))
    node = next(n for n in nodes if n["state"] == "ready")["name"]
    without = ok(sh(command.replace(" --constraint disk=ssd", "")), command)
    assert without.startswith(f"would run on node {node} (1 node(s) could take it)")


def test_the_login_and_context_lines_run_as_written(
    controller: Controller, env: dict[str, str], tmp_path: Path
) -> None:
    """With a member token of the test's project for `...` and $TOKEN, and a contexts file that
    holds `hutch up`'s `local` (so `hutch context use local` has one to use)."""
    project = env.pop("HUTCH_PROJECT")
    issued = Hutch(env)("token", "create", "-p", project, "--role", "member", check=True)
    token = issued.stdout.splitlines()[-1]
    contexts = tmp_path / "contexts.toml"
    contexts.write_text((controller.state_dir / "contexts.toml").read_text())
    env = {**env, "TOKEN": token, "HUTCH_CLIENT_CONFIG": str(contexts)}
    for written in block("## Projects, tokens and quotas", "HUTCH_URL="):
        line = written.replace("HUTCH_TOKEN=...", f"HUTCH_TOKEN={token}")
        line = line.replace("http://127.0.0.1:7878", controller.url)
        ran = subprocess.run(
            ["bash", "-c", line], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, f"{line}: {ran.stderr}"
        if line.startswith("HUTCH_URL="):
            assert ran.stdout.split() == [
                "ID",
                "NAME",
                "IMAGE",
                "RUNTIME",
                "STATUS",
                "ADDRESS",
                "PORTS",
                "CREATED",
            ]
        if line.startswith("hutch context ls"):
            rows = [r.removeprefix("*").split() for r in ran.stdout.splitlines()[1:]]
            assert ["team-a", controller.url, project] in rows, rows
    listed = json.loads(Hutch(env)("context", "ls", "-o", "json", check=True).stdout)
    assert {c["name"]: c["current"] for c in listed} == {"local": True, "team-a": False}


def test_the_suspend_block_runs_as_written(sh: Shell) -> None:
    commands = [
        c for line in block("## Suspend, resume and snapshots", "hutch run -d") for c in split(line)
    ]
    for command in commands:
        out = ok(sh(command), command)
        if command == "hutch suspend warm":
            assert out == "warm\n"
            assert re.search(r"\swarm\s+busybox\s+microvm\s+suspended", ok(sh("hutch ps"), "ps"))
        elif command == "hutch run -d --name warm busybox -- sleep 3600":
            sleeper = ok(sh("hutch exec warm -- pidof sleep"), "pidof")
        elif command == "hutch resume warm":
            assert ok(sh("hutch exec warm -- pidof sleep"), "pidof") == sleeper
        elif command == "hutch snapshot create warm --name tmpl":
            assert out == "tmpl\n"
            ok(sh("hutch snapshot create warm --name spare"), "snapshot create")
        elif command == "hutch exec copy1 -- hostname":
            assert out == json.loads(ok(sh("hutch inspect copy1"), "inspect"))["id"] + "\n"
        elif command == "hutch snapshot ls":
            assert re.search(r"^tmpl\s+s-\w+\s+busybox\s", out, re.M), out
            # Stopped while suspended, it ended with no exit code: ps says exited, no "None".
            ok(sh("hutch suspend copy1 && hutch stop copy1"), "suspend, stop")
            ps = ok(sh("hutch ps"), "ps")
            assert re.search(r"\scopy1\s+busybox\s+microvm\s+exited\s{2}", ps), ps
        elif command.startswith("hutch snapshot rm tmpl"):
            assert out == "tmpl\n"
    # Several at once, as `hutch rm` takes them: each printed once deleted, up to one not found.
    several = sh("hutch snapshot rm spare nosuch")
    assert (several.returncode, several.stdout) == (125, "spare\n"), several.stderr
    assert several.stderr.startswith("hutch: no snapshot 'nosuch' in project "), several.stderr
    assert several.stderr.count("\n") == 1, several.stderr
    assert "tmpl" not in ok(sh("hutch snapshot ls"), "snapshot ls")
    assert len(commands) == 9, commands


def test_the_warm_pools_block_runs_as_written(
    sh: Shell, controller: Controller, env: dict[str, str]
) -> None:
    """A pool fills (its template booted and snapshotted, its machines restored, paused), a run
    takes one of them, which prints its own output, and the pool fills again."""
    commands = [c for line in block("### Warm pools", "hutch pool set") for c in split(line)]
    assert len(commands) == 4, commands
    set_, ls, run, rm = commands
    pool = ok(sh(set_), set_).strip()
    assert re.fullmatch(r"w-\w+", pool), pool

    def ready(n: int) -> str:
        deadline = time.monotonic() + 180
        while (out := ok(sh(ls), ls)) and not re.search(rf"\s{n}/2\s+ready\s", out):
            assert time.monotonic() < deadline and "failed" not in out, out
            time.sleep(0.5)
        return out

    assert re.search(rf"^{pool}\s+busybox\s+1\s+128M\s+64M\s+2/2\s+ready\s", ready(2), re.M)
    ran = sh(run)
    assert (ran.returncode, ran.stdout) == (0, "hi\n"), ran.stderr  # its own process's
    quick = json.loads(ok(sh("hutch inspect quick"), "inspect"))
    with controller.client(env["HUTCH_PROJECT"]) as client:
        events = client.events()
        try:
            said: list[str] = []
            for e in events:
                if e.object == quick["id"]:
                    said.append(e.message)
                    if e.state == "exited":
                        break
        finally:
            events.close()
    assert f"from pool {pool}" in said, said
    ready(2)  # refilled
    assert ok(sh(rm), rm) == "busybox\n"
    assert "quick" in ok(sh("hutch ps -a"), "ps")  # it is the project's: it stays
    ok(sh("hutch rm -f quick"), "rm")


@pytest.fixture
def registry(controller: Controller, tmp_path: Path, busybox_rootfs: Path) -> Iterator[Registry]:
    """registry.example.com of the README: on 127.0.0.1, holding team/app:1.2, which says app."""
    registry = Registry(tmp_path / "registry", port=controller.registry_port).start()
    try:
        layout = tmp_path / "app-layout"
        write_oci_layout(layout, [busybox_rootfs], {**BUSYBOX_CONFIG, "Cmd": ["echo", "app"]},
                         ref="v1")  # fmt: skip
        registry.push(layout, "v1", "team/app:1.2")
        yield registry
    finally:
        registry.stop()


def names(table: str) -> set[str]:
    return {row.split()[0] for row in table.splitlines()[1:]}


def test_the_images_block_runs_as_written(
    sh: Shell, registry: Registry, tmp_path: Path, busybox_rootfs: Path
) -> None:
    with (tmp_path / "app.tar").open("wb") as archive:  # as `docker save` would give it
        write_archive(busybox_rootfs, archive, config={**BUSYBOX_CONFIG, "Cmd": ["echo", "app1"]})
    tree = debootstrap_like(busybox_rootfs, tmp_path / "deb")
    with tarfile.open(tmp_path / "rootfs.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname=".")
    commands = block("## Images", "hutch image pull")
    assert len(commands) == 10
    for line in commands:
        command = line.replace("registry.example.com", registry.host).split("  #", 1)[0].strip()
        if command.startswith("hutch image rm --force"):  # a machine uses it: rm names it
            ok(sh("hutch run -d --runtime container --name uses-deb deb:12 -- sleep 600"), "run")
            refused = sh(command.replace(" --force", ""))
            assert refused.returncode == 125 and "uses-deb" in refused.stderr
        out = ok(sh(command), command)
        if command.startswith(("hutch image pull --local", "hutch image import rootfs")):
            assert out.startswith("sha256:")
        elif command == "hutch image ls":
            assert {f"{registry.host}/team/app:1.2", "app:1", "deb:12"} <= names(out), out
        elif command.startswith("hutch image inspect"):
            assert json.loads(out)["names"] == [f"{registry.host}/team/app:1.2"]
        elif command.startswith("hutch image export"):
            assert {"oci-layout", "index.json"} <= set(ok(sh("tar -tf app-oci.tar"), "tar").split())
        elif command == "hutch image rm app:1":
            assert "app:1" not in names(ok(sh("hutch image ls"), "ls"))
        elif command.startswith("hutch image rm --force"):
            assert "deb:12" not in names(ok(sh("hutch image ls"), "ls"))
        elif command.startswith("hutch sandbox run"):
            assert out == "app\n"


def test_the_networks_block_runs_as_written(sh: Shell, env: dict[str, str]) -> None:
    """Micro-VMs as the README runs them, with this node's free ports for 8080 and 5353 (the
    shared node may publish those already); RULE_ID is the id the first `rule add` printed.
    The published port answers once the rule lets port 80 in (and not before: web is in a
    group with no rules yet), and db resolves its own name from its network's DNS."""
    http, dns = free_port(), free_port()
    commands = [c for line in block("## Networks", "hutch network create") for c in split(line)]
    assert len(commands) == 18, commands
    rule_id = ""
    for written in commands:
        command = written.replace("8080:80", f"{http}:80").replace(":8080/", f":{http}/")
        command = command.replace("5353:53", f"{dns}:53").replace("RULE_ID", rule_id)
        if command.startswith("hutch sg rule add web ingress --protocol tcp --port 80 "):
            assert not _get(http, timeout=2)  # before the rule, web's group lets nothing in
        if command.startswith("curl"):  # the rule reaches the node within a poll: wait for it
            web = ip4_of(sh, "web")
            assert _until(lambda web=web: web in _get(http, timeout=2)), command  # type: ignore[misc]
            assert f"{web}\t" in ok(sh(command), command)  # web's /etc/hosts
            continue
        if command.startswith("hutch exec db -- nslookup"):  # db's network DNS, by its search
            found = _poll_ok(sh, command)
            assert f"db.{env['HUTCH_PROJECT']}.internal" in found and ip4_of(sh, "db") in found
            continue
        if command == "hutch network rm back" and not rule_id.startswith("done"):
            refused = sh(command)  # db is on it
            assert refused.returncode == 125, refused.stderr
            assert "network back: 1 machine(s) are on this network (db)" in refused.stderr
            rule_id = "done"
            continue
        ran = sh(command)
        out = ok(ran, command)
        if command.startswith("hutch network create back6"):
            assert "back6: 192.168.11.0/24, fd12:3456:789a:1::/64" in ran.stderr
        elif command == "hutch network ls":
            assert {"back", "back6"} <= names(out), out
        elif command == "hutch network inspect back":
            shown = json.loads(out)
            assert (shown["subnet4"], shown["egress"]) == ("192.168.10.0/24", "deny")
        elif command.startswith("hutch sg rule add web ingress --protocol tcp --port 80 "):
            rule_id = out.strip()
            assert rule_id.startswith("r-")
        elif command.startswith("hutch run -d --name web"):
            ps = ok(sh("hutch ps"), "ps")
            assert f"{http}->80/tcp" in ps and f"127.0.0.1:{dns}->53/udp" in ps, ps
        elif command == "hutch sg inspect web":
            assert [r["port_min"] for r in json.loads(out)["rules"]] == [80, 5432]
        elif command.startswith("hutch sg rule rm"):  # port 80 is closed again
            assert _until(lambda: not _get(http, timeout=2)), command
    # What the block made is gone; the default network, made when web first needed it, stays.
    assert names(ok(sh("hutch network ls"), "ls")) == {"default"}
    assert names(ok(sh("hutch sg ls"), "ls")) == set()


def ip4_of(sh: Shell, machine: str) -> str:
    return str(json.loads(ok(sh(f"hutch inspect {machine}"), "inspect"))["addresses"][0]["ip4"])


def _get(port: int, timeout: float) -> str:
    ran = subprocess.run(
        ["curl", "-s", "-m", str(timeout), f"http://127.0.0.1:{port}/hosts"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return ran.stdout


def _until(probe: Callable[[], bool], deadline: float = 60.0) -> bool:
    end = time.monotonic() + deadline
    while not probe():
        if time.monotonic() > end:
            return False
        time.sleep(0.3)
    return True


def _poll_ok(sh: Shell, command: str, deadline: float = 60.0) -> str:
    """`command`'s output once it succeeds (a machine's first packets may come a bit after
    `run -d` returns)."""
    end = time.monotonic() + deadline
    while True:
        ran = sh(command)
        if ran.returncode == 0 or time.monotonic() > end:
            return ok(ran, command)
        time.sleep(0.5)


def test_the_volumes_block_runs_as_written(sh: Shell, env: dict[str, str]) -> None:
    """Volumes as the README makes them, snapshots, a fork, growth, restore, and an export
    imported back: the import's export is the same bytes."""
    commands = [c for line in block("## Volumes", "hutch volume create") for c in split(line)]
    assert len(commands) == 13, commands
    for command in commands:
        out = ok(sh(command), command)
        if command == "hutch volume ls":
            assert {"db-data"} <= names(out), out
        elif command == "hutch volume inspect db-data":
            assert json.loads(out)["size_bytes"] == 1 << 30
        elif command.startswith("hutch volume snapshot db-data"):
            assert out.strip() == "before-migration"
            assert "before-migration" in ok(sh("hutch volume snapshot ls db-data"), "ls")
        elif command.startswith("hutch volume create db-preview"):
            shown = json.loads(ok(sh("hutch volume inspect db-preview"), "inspect"))
            assert shown["size_bytes"] == 1 << 30 and shown["state"] == "available"
        elif command.startswith("hutch volume extend"):
            assert json.loads(ok(sh("hutch volume inspect db-data"), "i"))["size_bytes"] == 2 << 30
        elif command.startswith("hutch volume restore"):
            assert json.loads(ok(sh("hutch volume inspect db-data"), "i"))["size_bytes"] == 1 << 30
        elif command.startswith("hutch volume import"):
            again = ok(sh("hutch volume export db-copy | cmp - db-data.hvol && echo same"), "cmp")
            assert again.strip() == "same"
    assert names(ok(sh("hutch volume ls"), "ls")) == set()


def test_the_volume_machines_block_runs_as_written(sh: Shell) -> None:
    """`hutch run -v` as the README shows it: a micro-VM writes the volume, a snapshot is frozen
    by it, it is stopped and destroyed, and another micro-VM reads what it wrote, read-only."""
    ok(sh("hutch volume create db-data --size 1G"), "create")
    node = json.loads(ok(sh("hutch volume inspect db-data"), "inspect"))["node"]
    commands = [c for line in block("## Volumes", "hutch run --dry-run -v") for c in split(line)]
    assert len(commands) == 6, commands
    for command in commands:
        ran = sh(command)
        out = ok(ran, command)
        if command.startswith("hutch run --dry-run"):
            assert (
                out.splitlines()[0]
                == f"would run on node {node} (volume db-data is on node {node})"
            )
        elif command.startswith("hutch volume snapshot"):
            assert out.strip() == "nightly" and "frozen" in ran.stderr
        elif command.startswith("hutch run --rm"):
            assert out.strip(), "the date db wrote"
    ok(sh("hutch volume rm db-data"), "rm")


def test_the_idle_block_runs_as_written(sh: Shell, controller: Controller) -> None:
    """One micro-VM (busybox httpd) on a free port for 8080: it suspends after 2 s without a
    connection; a connection to its published port wakes it and gets the page; steady
    requests keep it running; without them it idles again; events say why. Bad input is
    refused first, before any machine exists."""
    for argv, words in (
        ("--idle soon -p 1:80", "not a duration"),
        ("--idle 0s -p 1:80", "must be"),
        ("--idle 1m", "publishes none: publish a port"),
        ("--on-idle suspend -p 1:80", "give --idle"),
        ("--idle 1m --on-idle suspend -p 1:80 --runtime container",
         "container runtime cannot be suspended"),
        ("--idle 1m --on-idle nap -p 1:80", "--on-idle 'nap': say stop or suspend"),
    ):  # fmt: skip
        refused = sh(f"hutch run -d {argv} busybox -- true")
        assert refused.returncode == 125 and words in refused.stderr, (argv, refused.stderr)
    assert ok(sh("hutch ps -aq"), "ps") == ""

    http = free_port()
    commands = [
        c.replace("8080", str(http))
        for line in block("## Suspend, resume and snapshots", "hutch run -d --name site")
        for c in split(line)
    ]
    assert len(commands) == 6, commands
    client = controller.client(sh("echo $HUTCH_PROJECT").stdout.strip())

    def state() -> tuple[str, bool]:
        site = client.machines.get("site")
        return site.state, site.idled

    woke = False
    for command in commands:
        if command.startswith("sleep"):  # as long as it takes on a busy host
            assert _until(lambda: state() == ("suspended", True), 120), command
            continue
        out = ok(sh(command), command)
        if command.startswith("hutch run"):
            assert _until(lambda: state()[0] == "running", 120), command
        elif command == "hutch ps" and not woke:
            # Suspended for idling: ps says so (a connection wakes it).
            assert re.search(r"\ssite\s+busybox\s+microvm\s+suspended \(idle\)\s", out), out
        elif command.startswith("curl"):
            assert "localhost" in out, out  # the guest's /etc/hosts
            woke = True
        elif command == "hutch ps":
            assert re.search(r"\ssite\s+busybox\s+microvm\s+running", out), out
            # A request every 0.5 s for 6 s: no 2 s without a connection, it runs throughout.
            for _ in range(12):
                assert "localhost" in _get(http, timeout=5)
                assert state() == ("running", False)
                time.sleep(0.4)
            # Without them it idles again, and is woken again.
            assert _until(lambda: state() == ("suspended", True), 120)
            assert "localhost" in _get(http, timeout=60)
    assert ok(sh("hutch ps -q"), "ps") == ""  # removed
    woken = f"woken by a connection to port {http}"
    messages: list[str] = []
    with client:

        def listen() -> None:  # every event so far, then it would wait for more
            for event in client.events():
                messages.append(event.message)
                if messages.count(woken) == 2:
                    return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        listener.join(30)
    assert messages.count(woken) == 2 and messages.count("idle for 2s: suspended") == 2, messages


def test_the_stats_block_runs_as_written(
    sh: Shell, controller: Controller, env: dict[str, str]
) -> None:
    """One micro-VM that keeps a vCPU busy for 5 s and sends pings: its samples show CPU used
    and bytes sent (the guest's own counters, read on its node), in the CLI's JSON and table,
    and the SDK's history; the live view refreshes until interrupted."""
    commands = [c for line in block("## Stats", "hutch run -d --name busy") for c in split(line)]
    assert len(commands) == 5, commands
    client = controller.client(sh("echo $HUTCH_PROJECT").stdout.strip())
    for command in commands:
        if command == "hutch stats busy":  # live: it runs until Ctrl-C
            live = subprocess.Popen(
                ["bash", "-c", f"exec {command} --interval 0.5"], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                # As from a terminal: under `make test &` (a background job) SIGINT is
                # ignored, and hutch keeps what it inherits, as `nohup` expects.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )  # fmt: skip
            # Piped, it prints a whole table every interval (not one, cut to 80 columns, at exit).
            # Interrupted once two have come (not after a fixed time: a loaded host starts it late).
            row = f"{client.machines.get('busy').id}  busy"
            assert live.stdout is not None
            seen = ""
            while seen.count(row) < 2 and (line := live.stdout.readline()):
                seen += line
            live.send_signal(signal.SIGINT)
            out, err = live.communicate(timeout=30)
            assert live.returncode == 0 and (seen + out).count(row) >= 2, (seen + out, err)
            continue
        out = ok(sh(command), command)
        if command.startswith("hutch run"):
            machine = out.strip()

            def used() -> dict[str, Any] | None:
                row = json.loads(ok(sh("hutch stats -o json busy"), "stats"))[0]
                moved = row.get("cpu_s", 0) > 1 and row.get("tx_bytes", 0) > 0
                return row if moved and row["cpu_percent"] is not None else None

            assert _until(lambda: used() is not None, 120), sh("hutch stats -o json busy").stdout
            history = client.machines.metrics("busy")
            cpu = [p.cpu_s for p in history.points]
            assert len(cpu) >= 2 and cpu == sorted(cpu) and history.step == 10, history
            last = history.points[-1]
            assert last.memory_limit_bytes > last.memory_bytes > 0 and last.running_s > 0, last
            assert last.disk_read_bytes > 0, last  # the guest read its root disk
        elif command == "hutch stats --no-stream":
            # One line per machine, its id whole, however narrow the output (a pipe here).
            size = r"[\d.]+ \w?i?B / [\d.]+ \w?i?B"
            row = rf"^{machine}\s+busy\s+\d+\.\d%\s+{size}\s+{size}\s+{size}\s+running$"
            assert re.search(row, out, re.M), out
        elif command == "hutch stats -o json busy":
            (row,) = json.loads(out)
            assert row["name"] == "busy" and row["state"] == "running", row


def test_the_usage_and_invoices_block_runs_as_written(
    sh: Shell, env: dict[str, str], tmp_path: Path
) -> None:
    """The README's price book set from its TOML, then a fresh project's usage (none yet), its
    invoices, its draft as HTML, a budget that stops it, and a credit for its next invoice."""
    section = README.read_text().split("\n## Usage and invoices\n", 1)[1]
    found = re.search(r"```toml\n(.*?)```", section, re.S)
    assert found
    (tmp_path / "prices.toml").write_text(found.group(1))
    project = env["HUTCH_PROJECT"]
    lines = block("## Usage and invoices", "hutch price set")
    commands = [c.replace("acme", project) for line in lines for c in split(line)]
    assert len(commands) == 7, commands
    for command in commands:
        ok(sh(command), command)
    prices = json.loads(ok(sh("hutch price show"), "price show"))
    assert (prices["plan"], prices["included"]) == ("basic", {"vcpu_seconds": "10"})
    assert (tmp_path / "usage.csv").read_text().startswith("group,vcpu_seconds,")
    page = (tmp_path / "invoice.html").read_text()
    assert f"Project <strong>{project}</strong>" in page and "@media print" in page
    budget = json.loads(ok(sh(f"hutch budget show {project}"), "budget show"))
    assert (budget["amount"], budget["stop"]) == ("100", True)
