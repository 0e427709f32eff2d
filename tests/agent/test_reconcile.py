"""`NodeAgent.reconcile`: one round of converging a node's sandboxes on its assignments.

The controller is real (app, store, scheduler, in-process behind a real HTTP server) and so is
the agent's link to it; the runtime is a fake driver that holds sandboxes in memory and records
what it was asked, so a round's decisions (adopt, start, stop, destroy, report) show directly.
The end-to-end cluster scenarios in tests/cli run the same loop over real micro-VMs.
"""

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest

from hutch import config
from hutch.agent.link import ControllerLink
from hutch.agent.node import Identity, NodeAgent
from hutch.model.errors import Conflict, NotFound
from hutch.model.sandbox import ExitStatus, SandboxInfo, SandboxState
from hutch.network import links, nft
from hutch.runtime.driver import SandboxDriver
from hutch.wire.nodes import Assignment, MachineReport
from tests.helpers import free_port
from tests.helpers.api import JOIN, Api, close_api, open_api, served


class FakeDriver:
    """The part of a runtime driver that reconcile uses, over sandboxes held in memory.
    `calls` lists what it was asked ("start", "stop", "destroy", "suspend", "resume"), with the
    sandbox id; `destroying`, when set, holds every destroy until it is set, and `saving` every
    suspend (a resume meanwhile cancels it, as the real drivers' do); a start or resume of a
    sandbox in `refused` fails."""

    name = "container"

    def __init__(self) -> None:
        self.boxes: dict[str, SandboxInfo] = {}
        self.calls: list[tuple[str, str]] = []
        self.destroying: asyncio.Event | None = None
        self.saving: asyncio.Event | None = None
        self._saves: dict[str, asyncio.Future[bool]] = {}  # suspends held by `saving`
        self.refused: set[str] = set()  # sandboxes whose start fails
        self._ends: dict[str, asyncio.Future[ExitStatus]] = {}

    def has(self, sandbox: str, state: SandboxState = SandboxState.RUNNING) -> None:
        """A sandbox as `recover` would have adopted it."""
        self.boxes[sandbox] = SandboxInfo(sandbox, self.name, state, pid=1, created_at=1.0)
        self._ends[sandbox] = asyncio.get_running_loop().create_future()

    def end(self, sandbox: str, status: ExitStatus) -> None:
        state = SandboxState.FAILED if status.failed else SandboxState.EXITED
        self.boxes[sandbox] = replace(self.boxes[sandbox], state=state, exit=status, pid=0)
        if not self._ends[sandbox].done():
            self._ends[sandbox].set_result(status)

    async def sandboxes(self) -> list[SandboxInfo]:
        return list(self.boxes.values())

    async def start(self, sandbox: str) -> SandboxInfo:
        self.calls.append(("start", sandbox))
        if sandbox in self.refused:
            raise Conflict(f"sandbox {sandbox} did not boot")
        self.boxes[sandbox] = replace(self.boxes[sandbox], state=SandboxState.RUNNING)
        return self.boxes[sandbox]

    async def stop(self, sandbox: str, timeout: float = 10.0, sig: int | None = None) -> ExitStatus:
        self.calls.append(("stop", sandbox))
        self.end(sandbox, ExitStatus(143, signal=15))
        return await self._ends[sandbox]

    async def destroy(self, sandbox: str, force: bool = False) -> None:
        self.calls.append(("destroy", sandbox))
        assert force  # the agent never leaves a sandbox it was told to remove
        if self.destroying is not None:
            await self.destroying.wait()
        if sandbox in self.boxes:
            self.end(sandbox, ExitStatus(255, error="destroyed"))
            del self.boxes[sandbox]

    async def suspend(self, sandbox: str) -> SandboxInfo:
        self.calls.append(("suspend", sandbox))
        if self.saving is not None:
            save = self._saves[sandbox] = asyncio.ensure_future(self.saving.wait())
            try:
                await asyncio.shield(save)
            except asyncio.CancelledError:
                if not save.cancelled():
                    raise
                raise Conflict(f"a resume of sandbox {sandbox} cancelled its suspend") from None
            finally:
                del self._saves[sandbox]
        self.boxes[sandbox] = replace(self.boxes[sandbox], state=SandboxState.SUSPENDED, pid=0)
        return self.boxes[sandbox]

    async def resume(self, sandbox: str) -> SandboxInfo:
        self.calls.append(("resume", sandbox))
        if (save := self._saves.get(sandbox)) is not None:
            save.cancel()  # it runs on, never suspended
            await asyncio.wait([save])
            return self.boxes[sandbox]
        if sandbox in self.refused:
            raise Conflict(f"sandbox {sandbox} did not restore")
        self.boxes[sandbox] = replace(self.boxes[sandbox], state=SandboxState.RUNNING, pid=2)
        return self.boxes[sandbox]

    async def wait(self, sandbox: str, timeout: float | None = None) -> ExitStatus:
        if sandbox not in self._ends:
            raise NotFound(f"no sandbox {sandbox!r} on this host")
        return await asyncio.shield(self._ends[sandbox])

    async def close(self) -> None:
        pass


@dataclass
class Node:
    api: Api
    agent: NodeAgent
    driver: FakeDriver
    token: str  # a member of project alpha

    async def machine(self, **body: object) -> dict[str, Any]:
        """A machine of project alpha, placed on this node (the only one not cordoned)."""
        r = await self.api.machine(self.token, **body)
        assert r.status_code == 201, r.text
        return await self.api.placed(self.token, r.json()["id"])

    async def get(self, ref: str) -> dict[str, Any]:
        got: dict[str, Any] = (await self.api.call("GET", f"/v1/machines/{ref}", self.token)).json()
        return got

    async def assignments(self) -> list[Assignment]:
        assert self.agent.identity is not None
        answer = await self.agent.link.assignments(self.agent.identity.node_id, -1, 0)
        return answer.machines

    async def round(self) -> None:
        """One round of the agent's loop over what the controller says now, and the work it
        started (not the exits it watches)."""
        await self.agent.reconcile(await self.assignments())
        await settled(self.agent)


async def settled(agent: NodeAgent) -> None:
    while agent._work:
        await asyncio.gather(*agent._work.values())


def new_agent(url: str, joined: dict[str, Any], driver: FakeDriver, state_dir: Path) -> NodeAgent:
    settings = config.load(state_dir=state_dir, registry_allow=[])  # no pull leaves this host
    agent = NodeAgent(settings, controller=url, join_secret=JOIN, name="sim-2",
                      advertise="http://127.0.0.1:9")  # fmt: skip
    agent.drivers = {"container": cast(SandboxDriver, driver)}
    agent.identity = Identity(joined["node_id"], joined["credential"], "", url)
    agent.link.credential = joined["credential"]
    return agent


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    api, _ = await open_api(tmp / "controller")
    await api.project("alpha")
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    joined = await api.join("sim-2")
    driver = FakeDriver()
    async with served(api) as url:
        agent = new_agent(url, joined, driver, tmp / "agent")
        try:
            yield Node(api, agent, driver, await api.token("alpha", "member"))
        finally:
            await agent.close()
    await close_api(api)
    shutil.rmtree(tmp, ignore_errors=True)


async def eventually(node: Node, ref: str, **want: object) -> dict[str, Any]:
    """The machine once its fields are as `want` says (a watched exit reports on its own)."""
    for _ in range(200):
        m = await node.get(ref)
        if all(m[k] == v for k, v in want.items()):
            return m
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ref} never got to {want}: {m}")


async def test_a_sandbox_that_is_assigned_is_adopted_and_watched(node: Node) -> None:
    """A restarted agent finds its sandbox running: it reports it, watches it, and leaves it be
    (no second sandbox, no restart of it)."""
    m = await node.machine()
    node.driver.has(f"{m['id']}-1")
    await node.round()
    assert (await node.get(m["id"]))["state"] == "running"
    assert node.driver.calls == []
    node.driver.end(f"{m['id']}-1", ExitStatus(3))
    got = await eventually(node, m["id"], state="exited")
    assert got["exit_code"] == 3
    await node.round()  # the ended sandbox stays, for logs, until the machine is removed
    assert node.driver.calls == [] and f"{m['id']}-1" in node.driver.boxes


async def test_a_sandbox_left_created_is_started(node: Node) -> None:
    """A sandbox the agent created but had not started when it stopped (`recover` adopts it
    booted, its workload not started) is started, not left waiting for ever; one that does not
    start is destroyed, and its machine failed."""
    m, bad = await node.machine(), await node.machine()
    node.driver.has(f"{m['id']}-1", SandboxState.CREATED)
    node.driver.has(f"{bad['id']}-1", SandboxState.CREATED)
    node.driver.refused.add(f"{bad['id']}-1")
    await node.round()
    assert sorted(node.driver.calls) == sorted(
        [("start", f"{m['id']}-1"), ("start", f"{bad['id']}-1"), ("destroy", f"{bad['id']}-1")]
    )
    assert (await node.get(m["id"]))["state"] == "running"
    failed = await node.get(bad["id"])  # a start that fails is the machine's failure
    assert (failed["state"], failed["error"]) == ("failed", f"sandbox {bad['id']}-1 did not boot")


async def test_what_is_no_longer_assigned_is_destroyed(node: Node) -> None:
    """Sandboxes of a machine's earlier generation, of a machine the controller does not know
    (another controller's, or long gone) and of a machine being removed are destroyed; only the
    removal is reported (the others are no machine's current generation)."""
    kept = await node.machine()
    removed = await node.machine()
    for sandbox in (f"{kept['id']}-1", f"{removed['id']}-1", "m-unknown-7"):
        node.driver.has(sandbox)
    await node.round()
    await node.api.call("POST", "/v1/nodes/sim-2/cordon")  # the new generation waits
    r = await node.api.call("POST", f"/v1/machines/{kept['id']}/restart", node.token)
    assert r.status_code == 200, r.text
    r = await node.api.call("DELETE", f"/v1/machines/{removed['id']}?force=true", node.token)
    assert r.status_code == 204, r.text
    await node.round()
    destroyed = {s for call, s in node.driver.calls if call == "destroy"}
    assert destroyed == {f"{kept['id']}-1", f"{removed['id']}-1", "m-unknown-7"}
    assert len(node.driver.calls) == 3
    assert node.driver.boxes == {}
    assert (await node.get(removed["id"]))["state"] == "destroyed"
    again = await node.get(kept["id"])
    assert (again["state"], again["node"]) == ("created", None)  # its second generation


async def test_a_report_that_was_lost_is_sent_again(node: Node) -> None:
    """A report the controller never got (it was down, the connection broke) is sent at the
    next round; one it got is not sent again, and a restarted agent's repeats change nothing."""
    m = await node.machine()
    node.driver.has(f"{m['id']}-1")
    link = node.agent.link
    assignments = await node.assignments()
    node.agent.link = ControllerLink(f"http://127.0.0.1:{free_port()}", link.credential)
    try:
        await node.agent.reconcile(assignments)  # the report is lost
        await settled(node.agent)
    finally:
        await node.agent.link.close()
        node.agent.link = link
    assert (await node.get(m["id"]))["state"] == "created"
    await node.round()
    running = await node.get(m["id"])
    assert running["state"] == "running"
    await node.round()
    assert await node.get(m["id"]) == running
    assert node.agent.identity is not None
    restarted = new_agent(link.url, {"node_id": node.agent.identity.node_id,
                                     "credential": link.credential}, node.driver,
                          node.agent.dir.parent)  # fmt: skip
    try:
        await restarted.reconcile(await node.assignments())
        await settled(restarted)
    finally:
        await restarted.close()
    assert await node.get(m["id"]) == running
    assert node.driver.calls == []


async def test_a_destroy_in_progress_is_not_asked_again(node: Node) -> None:
    """Rounds that come while a sandbox is being destroyed (a slow VM) leave it to the destroy
    under way: one destroy, one report."""
    m = await node.machine()
    node.driver.has(f"{m['id']}-1")
    node.driver.has("m-unknown-7")
    await node.round()
    r = await node.api.call("DELETE", f"/v1/machines/{m['id']}?force=true", node.token)
    assert r.status_code == 204, r.text
    node.driver.destroying = asyncio.Event()
    for _ in range(3):
        await node.agent.reconcile(await node.assignments())
        await asyncio.sleep(0.05)
    assert sorted(node.driver.calls) == [("destroy", f"{m['id']}-1"), ("destroy", "m-unknown-7")]
    assert (await node.get(m["id"]))["state"] == "running"
    node.driver.destroying.set()
    await settled(node.agent)
    assert (await node.get(m["id"]))["state"] == "destroyed"
    await node.round()
    assert len(node.driver.calls) == 2 and node.driver.boxes == {}


async def test_a_machine_stopped_during_its_restart_backoff_is_not_started(node: Node) -> None:
    """A new generation waits out its backoff on the node before it starts; stopped or removed
    meanwhile (`hutch stop` on a machine that keeps failing), it is not started after all."""
    stopped, removed = await node.machine(), await node.machine()
    async with node.api.ctl.store.write() as tx:  # as a restart leaves them: a backoff to wait
        for m in (stopped, removed):
            row = await tx.machines.by_id(m["id"])
            await tx.machines.update(replace(row, start_after=time.time() + 2.0))
    await node.agent.reconcile(await node.assignments())  # both wait out their backoff
    r = await node.api.call("POST", f"/v1/machines/{stopped['id']}/stop", node.token)
    assert r.status_code == 200, r.text
    r = await node.api.call("DELETE", f"/v1/machines/{removed['id']}?force=true", node.token)
    assert r.status_code == 204, r.text
    await node.agent.reconcile(await node.assignments())  # it skips the work under way
    await settled(node.agent)
    assert node.driver.calls == []
    got = await node.get(stopped["id"])
    assert (got["state"], got["error"]) == ("exited", "stopped before it started")
    assert (await node.get(removed["id"]))["state"] == "destroyed"


async def test_a_rule_change_is_applied_while_a_round_waits(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round may wait for long (here its report, to a controller slow to take it; elsewhere
    a sandbox's work): the answers meanwhile still have their network state applied at once,
    so a security group's rule removed now closes the port now, not after that round."""
    netns = node.agent.dir / "netns-test"  # the agent's links and rules, away from the host's
    node.agent.dir.mkdir(parents=True, exist_ok=True)
    links.create_netns(netns)
    node.agent.network.opts = replace(node.agent.network.opts, netns=netns)
    r = await node.api.call("POST", "/v1/security-groups", node.token, json={
        "name": "web", "rules": [{"direction": "ingress", "protocol": "tcp", "port_min": 80,
                                  "port_max": 80, "remote_cidr": "0.0.0.0/0"}]})  # fmt: skip
    rule = r.json()["rules"][0]["id"]
    m = await node.machine(security_groups=["web"])
    sandbox = f"{m['id']}-1"
    node.driver.has(sandbox)  # running: the round reports so, and waits for the controller
    reporting, answered = asyncio.Event(), asyncio.Event()
    report = node.agent.link.report

    async def slow_report(node_id: str, machine_id: str, body: MachineReport) -> None:
        reporting.set()
        await answered.wait()
        await report(node_id, machine_id, body)

    applied: list[dict[str, nft.Groups]] = []
    set_groups = node.agent.network.set_groups

    def recorded(groups: dict[str, nft.Groups]) -> bool:
        applied.append(groups)
        return set_groups(groups)

    monkeypatch.setattr(node.agent.link, "report", slow_report)
    monkeypatch.setattr(node.agent.network, "set_groups", recorded)
    run = asyncio.create_task(node.agent.run())
    try:
        await asyncio.wait_for(reporting.wait(), 30)
        assert [a.port_min for a in applied[-1][sandbox].ingress] == [80]
        r = await node.api.call("DELETE", f"/v1/security-groups/web/rules/{rule}", node.token)
        assert r.status_code == 200, r.text
        for _ in range(300):  # generous: the poll wakes at once; the round still waits
            if applied[-1][sandbox].ingress == ():
                break
            await asyncio.sleep(0.1)
        assert applied[-1][sandbox].ingress == (), "the rule change waited for the round"
        assert (await node.get(m["id"]))["state"] == "created"  # the report is still held
        answered.set()
        await eventually(node, m["id"], state="running")
    finally:
        answered.set()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        links.remove_netns(netns)


async def test_suspend_and_resume_follow_what_the_controller_wants(node: Node) -> None:
    """Wanted suspended, a running sandbox is suspended and reported so; a later round (a
    restarted agent) reports it again and does nothing; wanted running, it is resumed, watched
    again, and reported `resumed`. One that fails to resume fails its machine, and is not tried
    again at every round."""
    node.agent.drivers["microvm"] = node.agent.drivers["container"]
    m, bad = await node.machine(runtime="microvm"), await node.machine(runtime="microvm")
    sandbox, other = f"{m['id']}-1", f"{bad['id']}-1"
    for box in (sandbox, other):
        node.driver.has(box)
    await node.round()
    for machine in (m, bad):
        r = await node.api.call("POST", f"/v1/machines/{machine['id']}/suspend", node.token)
        assert r.status_code == 200, r.text
    await node.round()
    assert sorted(node.driver.calls) == sorted([("suspend", other), ("suspend", sandbox)])
    assert (await node.get(m["id"]))["state"] == "suspended"
    await node.round()
    assert len(node.driver.calls) == 2

    node.driver.refused.add(other)
    for machine in (m, bad):
        r = await node.api.call("POST", f"/v1/machines/{machine['id']}/resume", node.token)
        assert r.status_code == 200 and r.json()["state"] == "starting", r.text
    await node.round()
    assert (await node.get(m["id"]))["state"] == "running"
    failed = await node.get(bad["id"])
    assert (failed["state"], failed["error"]) == (
        "failed", f"could not resume: sandbox {other} did not restore",
    )  # fmt: skip
    await node.round()
    assert sorted(node.driver.calls[2:]) == sorted([("resume", other), ("resume", sandbox)])
    node.driver.end(sandbox, ExitStatus(0))  # watched again since its resume
    assert (await eventually(node, m["id"], state="exited"))["exit_code"] == 0


async def test_a_resume_cancels_a_suspend_under_way(node: Node) -> None:
    """Wanted running again while its sandbox is still being saved (a micro-VM's memory takes
    a while), the node does not wait for the save to end and then resume it: it cancels the
    suspend (the driver's resume does), the sandbox runs on, watched, and the machine's
    events say the suspend was cancelled."""
    node.agent.drivers["microvm"] = node.agent.drivers["container"]
    m = await node.machine(runtime="microvm")
    sandbox = f"{m['id']}-1"
    node.driver.has(sandbox)
    await node.round()
    node.driver.saving = asyncio.Event()  # never set: only a cancel ends the save
    r = await node.api.call("POST", f"/v1/machines/{m['id']}/suspend", node.token)
    assert r.status_code == 200, r.text
    await node.agent.reconcile(await node.assignments())
    r = await node.api.call("POST", f"/v1/machines/{m['id']}/resume", node.token)
    assert r.status_code == 200 and r.json()["state"] == "running", r.text
    await asyncio.wait_for(node.round(), 10)
    assert node.driver.calls == [("suspend", sandbox), ("resume", sandbox)]
    assert node.driver.boxes[sandbox].state is SandboxState.RUNNING
    got = await node.get(m["id"])
    assert (got["state"], got["desired"]) == ("running", "running")
    async with node.api.ctl.store.read() as tx:
        events = await tx.events.since((await tx.projects.by_name("alpha")).id, 0)
    assert [e.message for e in events if e.object_id == m["id"]][-1] == (
        f"not suspended: a resume of sandbox {sandbox} cancelled its suspend"
    )
    node.driver.end(sandbox, ExitStatus(0))  # watched again
    assert (await eventually(node, m["id"], state="exited"))["exit_code"] == 0
