"""`hutch up -d` and `hutch down` (what `make up` does, from an empty data directory), and
`hutch controller` with `hutch agent` as separate processes, as on a cluster. Each test runs its
node agents in a network namespace of its own (one agent per namespace)."""

import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch.client import Client, config
from hutch.images.build import write_archive
from tests.helpers import free_port
from tests.helpers.cli import HUTCH, Hutch, one_clear_line
from tests.helpers.netns import own_network_namespace


@pytest.fixture(autouse=True)
def _own_namespace() -> Iterator[None]:
    """The session's `hutch up` manages the session's namespace: these tests' agents get one of
    their own."""
    with own_network_namespace():
        yield


def test_up_detached_then_a_first_workload_then_down(
    hutch: Hutch, hutch_env: dict[str, str], short_dir: Path, busybox_rootfs: Path
) -> None:
    # A join secret of the operator's: hutch up's own agent must join with it too.
    hutch_env["HUTCH_JOIN_SECRET"] = "a-join-secret-the-operator-chose"
    data = short_dir / "data"
    port = str(free_port())
    up = hutch("up", "-d", "--data-dir", str(data), "--port", port)
    assert up.returncode == 0, up.stderr + (data / "hutch.log").read_text()
    assert f"API at http://127.0.0.1:{port}, dashboard at http://127.0.0.1:{port}/ui" in up.stdout
    assert f"sign in with {data / 'admin-token'}" in up.stdout
    assert f"stop: hutch down --data-dir {data})" in up.stdout  # a bare `hutch down` would not
    assert stat.S_IMODE((data / "admin-token").stat().st_mode) == 0o600
    try:
        again = hutch("up", "-d", "--data-dir", str(data), "--port", port)
        assert again.returncode == 0 and "already up" in again.stdout
        assert f"stop: hutch down --data-dir {data})" in again.stdout
        bare = hutch("down")
        assert bare.returncode == 125 and "hutch down --data-dir DIR" in bare.stderr
        # The saved `local` context makes the next commands talk to it.
        imported = hutch("image", "import", str(busybox_rootfs), "--name", "busybox", "--public")
        assert imported.returncode == 0 and imported.stdout.startswith("sha256:"), imported.stderr
        run = hutch("run", "--rm", "busybox", "--", "echo", "hello")  # in a micro-VM
        assert (run.returncode, run.stdout) == (0, "hello\n"), run.stderr
        [machine] = json.loads(hutch("ps", "-a", "-o", "json").stdout)
        assert (machine["runtime"], machine["state"]) == ("microvm", "destroyed")  # --rm
        kept = hutch("run", "-d", "--runtime", "container", "busybox", "--", "sleep", "600")
        assert kept.returncode == 0, kept.stderr
        down = hutch("down", "--data-dir", str(data))
        assert (down.returncode, down.stdout) == (0, "hutch is down\n"), down.stderr
        assert "keep running; the next `hutch up` picks them up again" in down.stderr
        # A clean stop is a quiet one: its servers are told to exit, not cancelled, and the
        # agent's long poll ends with the agent (each once left a traceback in the log).
        assert "Traceback" not in (data / "hutch.log").read_text()
        assert hutch("up", "-d", "--data-dir", str(data), "--port", port).returncode == 0
        assert hutch("ps", "-q").stdout.split() == [kept.stdout.strip()]  # picked up, running
    finally:
        down = hutch("down", "--data-dir", str(data), "--stop-machines")
    assert (down.returncode, down.stdout) == (0, "hutch is down\n"), down.stderr
    assert "stopped 1 machine(s)" in down.stderr
    gone = hutch("ps")
    assert gone.returncode == 125 and "cannot be reached" in one_clear_line(gone.stderr)
    assert "`hutch up -d` starts one" in gone.stderr
    # On another port, with the same data: the same node (it joined once), ready again.
    moved = hutch("up", "-d", "--data-dir", str(data), "--port", str(free_port()))
    assert moved.returncode == 0, moved.stderr + (data / "hutch.log").read_text()
    try:
        [stopped] = json.loads(hutch("ps", "-o", "json").stdout)
        assert (stopped["state"], stopped["desired"]) == ("exited", "stopped")  # stays stopped
        assert hutch("rm", stopped["id"]).returncode == 0
        ran = hutch("run", "--rm", "--runtime", "container", "busybox", "--", "echo", "moved")
        assert (ran.returncode, ran.stdout) == (0, "moved\n"), ran.stderr
        assert len(json.loads(hutch("node", "ls", "-o", "json").stdout)) == 1
    finally:
        assert hutch("down", "--data-dir", str(data)).returncode == 0
    twice = hutch("down", "--data-dir", str(data))
    assert twice.returncode == 125 and "no hutch up -d running" in one_clear_line(twice.stderr)


def contexts_of(hutch: Hutch) -> tuple[str | None, dict[str, str]]:
    """(the current context, each context's URL), as `hutch context ls` says."""
    listed = hutch("context", "ls", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    current = [r["name"] for r in rows if r["current"]]
    return (current[0] if current else None), {r["name"]: r["url"] for r in rows}


def test_up_saves_its_context_without_taking_over_the_users(
    hutch: Hutch, hutch_env: dict[str, str], short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUTCH_CLIENT_CONFIG", hutch_env["HUTCH_CLIENT_CONFIG"])
    # The user works with another controller, and saved a context named `local` of their own.
    # (Ports nothing listens on: nothing is sent to them.)
    prod, theirs = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    Path(hutch_env["HUTCH_CLIENT_CONFIG"]).write_text(
        f'current = "prod"\n[contexts.prod]\nurl = "{prod}"\ntoken = "prod-token"\n'
        f'[contexts.local]\nurl = "{theirs}"\ntoken = "their-token"\n'
    )
    data = short_dir / "data"
    token_file = data / "admin-token"

    def up(port: int) -> tuple[str, subprocess.CompletedProcess[str]]:
        started = hutch("up", "-d", "--data-dir", str(data), "--port", str(port))
        assert started.returncode == 0, started.stderr + (data / "hutch.log").read_text()
        return f"http://127.0.0.1:{port}", started

    try:
        # `local` is the user's: kept, and the user is told how to reach this controller.
        port = free_port()
        url, started = up(port)
        assert contexts_of(hutch) == ("prod", {"prod": prod, "local": theirs})
        assert one_clear_line(started.stderr) == (
            f"hutch: context local is another controller's ({theirs}) and was kept; to use "
            f"this one: hutch login {url} --name NAME --token-stdin < {token_file}"
        )
        assert hutch("down", "--data-dir", str(data)).returncode == 0
        # With no `local`, it saves its own, but the user's current context stays current.
        assert hutch("context", "rm", "local").returncode == 0
        url, started = up(port)
        assert contexts_of(hutch) == ("prod", {"prod": prod, "local": url})
        assert one_clear_line(started.stderr) == (
            "hutch: context local saved, but the CLI still uses context prod: "
            "switch with `hutch context use local`"
        )
        assert hutch("context", "use", "local").returncode == 0
        listed = hutch("ps")
        assert listed.returncode == 0, listed.stderr
        assert hutch("down", "--data-dir", str(data)).returncode == 0
        # The same hutch up again (from scratch: a new admin token, on another port): its own
        # context follows it, and stays current.
        shutil.rmtree(data)
        url, started = up(free_port())
        assert contexts_of(hutch) == ("local", {"prod": prod, "local": url})
        assert started.stderr == ""
        assert config.load()[1]["local"].token == token_file.read_text().strip()
        listed = hutch("ps")
        assert listed.returncode == 0, listed.stderr
    finally:
        hutch("down", "--data-dir", str(data))


def test_a_controller_and_an_agent_apart(
    hutch_env: dict[str, str], short_dir: Path, busybox_rootfs: Path
) -> None:
    port, secret = free_port(), "a-join-secret-for-this-test"
    url = f"http://127.0.0.1:{port}"
    controller_env = {**hutch_env, "HUTCH_STATE_DIR": str(short_dir / "c"),
                      "HUTCH_JOIN_SECRET": secret}  # fmt: skip
    agent_env = {**hutch_env, "HUTCH_STATE_DIR": str(short_dir / "a")}
    # The secret in a file, not on the command line, where every user of the host sees it.
    secret_file = short_dir / "join-secret"
    secret_file.write_text(secret + "\n")
    started = [
        Hutch(controller_env).start("controller", "--listen", f"127.0.0.1:{port}",
                                    stderr=(short_dir / "c.log").open("wb")),
        Hutch(agent_env).start("agent", "--controller", url, "--join-secret-file",
                               str(secret_file), "--name", "node-a", "--label", "zone=a",
                               stderr=(short_dir / "a.log").open("wb")),
    ]  # fmt: skip
    try:
        token = wait_for_node(url, short_dir / "c" / "admin-token", short_dir)
        agent_cmdline = Path(f"/proc/{started[1].pid}/cmdline").read_bytes()
        assert b"agent\0--controller" in agent_cmdline and secret.encode() not in agent_cmdline
        with Client(url, token, project="default") as client:
            [node] = client.nodes.list()
            assert (node.name, node.labels, node.state) == ("node-a", {"zone": "a"}, "ready")
            client.images.import_(layout_of(busybox_rootfs, short_dir), names=["busybox"])
            m = client.machines.run("busybox", ["echo", "from node-a"], runtime="container")
            assert client.machines.wait(m, timeout=60).exit_code == 0
            assert [line.data for line in client.machines.logs(m)] == ["from node-a\n"]
            client.machines.delete(m)
            client.machines.wait(m, "destroyed", timeout=60)
        # Another host's agent (node-a goes first: one agent per network namespace).
        started[1].send_signal(signal.SIGTERM)
        started[1].wait(30)
        elsewhere = Hutch({**agent_env, "HUTCH_STATE_DIR": str(short_dir / "b")}, timeout=60)
        refused = elsewhere("agent", "--controller", url, "--join-secret", "wrong")
        assert refused.returncode == 125 and "join" in one_clear_line(refused.stderr)
        unreadable = elsewhere(
            "agent", "--controller", url, "--join-secret-file", str(short_dir / "no")
        )
        assert unreadable.returncode == 125
        assert one_clear_line(unreadable.stderr) == (
            f"hutch: cannot read --join-token-file {short_dir / 'no'}: No such file or directory"
        )
    finally:
        for proc in reversed(started):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def wait_for_node(url: str, token_file: Path, logs: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            token = token_file.read_text().strip()
            answer = httpx.get(f"{url}/v1/nodes", headers={"Authorization": f"Bearer {token}"})
            if any(n["state"] == "ready" for n in answer.json()["items"]):
                return token
        except (OSError, httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    said = {name: (logs / name).read_text()[-2000:] for name in ("c.log", "a.log")}
    raise AssertionError(f"the agent did not join within 60 s: {said}")


def trusting(ca: Path) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=str(ca)) if ca.exists() else True


def layout_of(rootfs: Path, where: Path) -> Path:
    archive = where / "busybox.tar"
    with archive.open("wb") as out:
        write_archive(rootfs, out)
    return archive


def test_an_agent_joins_over_https_with_a_join_token_that_pins_the_ca(
    hutch_env: dict[str, str], short_dir: Path
) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    state = short_dir / "c"
    controller_env = {**hutch_env, "HUTCH_STATE_DIR": str(state)}
    agent_env = {**hutch_env, "HUTCH_STATE_DIR": str(short_dir / "a")}
    controller = Hutch(controller_env).start(
        "controller", "--listen", f"127.0.0.1:{port}", "--tls", "--tls-name", "127.0.0.1",
        stderr=(short_dir / "c.log").open("wb"),
    )  # fmt: skip
    agents: list[subprocess.Popen[bytes]] = []
    try:
        ca = state / "tls" / "ca.pem"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", verify=trusting(ca)).raise_for_status()
                break
            except (OSError, httpx.HTTPError):
                assert time.monotonic() < deadline, (short_dir / "c.log").read_text()[-2000:]
                time.sleep(0.2)
        admin = {"Authorization": f"Bearer {(state / 'admin-token').read_text().strip()}"}
        with httpx.Client(base_url=url, verify=trusting(ca), headers=admin) as http:
            made = http.post("/v1/nodes/join-tokens", json={"ttl": 600}).json()
            assert len(made["ca_pin"]) == 64 and made["token"].endswith("." + made["ca_pin"])
            # A token whose pin is not this controller's CA: the agent will not talk to it.
            forged = made["token"][:-64] + "0" * 64
            elsewhere = Hutch({**agent_env, "HUTCH_STATE_DIR": str(short_dir / "b")}, timeout=60)
            refused = elsewhere("agent", "--controller", url, "--join-token", forged)
            assert refused.returncode == 125, refused.stderr
            assert "does not match the join token's pin" in one_clear_line(refused.stderr)
            assert http.get("/v1/nodes").json()["items"] == []
            # The token in the environment, which only this user (and root) can read.
            agents.append(Hutch({**agent_env, "HUTCH_JOIN_TOKEN": made["token"]}).start(
                "agent", "--controller", url,
                "--name", "tls-node", "--domain", "rack-7", "--heartbeat", "1",
                stderr=(short_dir / "a.log").open("wb"),
            ))  # fmt: skip
            deadline = time.monotonic() + 60
            while not (nodes := http.get("/v1/nodes").json()["items"]):
                assert time.monotonic() < deadline, (short_dir / "a.log").read_text()[-2000:]
                time.sleep(0.2)
            cmdline = Path(f"/proc/{agents[0].pid}/cmdline").read_bytes()
            assert b"--domain\0rack-7" in cmdline and made["token"].encode() not in cmdline
            [node] = nodes
            assert (node["name"], node["domain"], node["state"]) == ("tls-node", "rack-7", "ready")
            # It heartbeats every second: last_seen moves on.
            time.sleep(2.5)
            assert http.get("/v1/nodes/tls-node").json()["last_seen"] > node["last_seen"]
            # The agent kept the CA it pinned, for its restarts.
            kept = short_dir / "a" / "node" / "controller-ca.pem"
            assert kept.read_bytes() == ca.read_bytes()
    finally:
        for proc in [*agents, controller]:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_one_agent_per_network_namespace(
    hutch: Hutch, hutch_env: dict[str, str], short_dir: Path
) -> None:
    """A second node agent in the namespace where one runs would take over its nftables tables
    and bridges: it is refused, naming the first, whichever way it is started; in another
    namespace, or once the first is gone (even by kill -9), it starts."""
    first, second = short_dir / "first", short_dir / "second"
    port = free_port()
    up = hutch("up", "-d", "--data-dir", str(first), "--port", str(port))
    assert up.returncode == 0, up.stderr + (first / "hutch.log").read_text()
    pid = int((first / "hutch.pid").read_text())
    refusal = (
        f"hutch: another hutch agent (pid {pid}, state dir {first}) manages the networks of "
        "this network namespace; run one agent per namespace"
    )
    ns = f"hutch-t-{uuid.uuid4().hex[:8]}"
    try:
        again = hutch("up", "-d", "--data-dir", str(second), "--port", str(free_port()))
        assert again.returncode == 125 and one_clear_line(again.stderr) == refusal
        assert not (second / "hutch.pid").exists()  # nothing was started
        foreground = hutch("up", "--data-dir", str(second), "--port", str(free_port()))
        assert foreground.returncode == 125 and refusal in foreground.stderr
        agent = Hutch({**hutch_env, "HUTCH_STATE_DIR": str(short_dir / "agent")})(
            "agent", "--controller", f"http://127.0.0.1:{port}", "--join-secret", "a-secret"
        )
        assert agent.returncode == 125 and refusal in agent.stderr  # before it tries to join
        # In a network namespace of its own, the same start works.
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        inside = ["nsenter", f"--net=/var/run/netns/{ns}", HUTCH]
        elsewhere = subprocess.run(
            [*inside, "up", "-d", "--data-dir", str(second), "--port", str(free_port())],
            env=hutch_env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert elsewhere.returncode == 0, elsewhere.stderr + (second / "hutch.log").read_text()
        down = subprocess.run([*inside, "down", "--data-dir", str(second)], env=hutch_env,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert down.returncode == 0, down.stderr
        # Once the first is gone, however it went, its claim went with it.
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline, "hutch up did not die"
            time.sleep(0.1)
        after = hutch("up", "-d", "--data-dir", str(second), "--port", str(free_port()))
        assert after.returncode == 0, after.stderr + (second / "hutch.log").read_text()
    finally:
        hutch("down", "--data-dir", str(second))
        hutch("down", "--data-dir", str(first))
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
