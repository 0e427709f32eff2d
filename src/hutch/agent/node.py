"""The node agent: joins a controller, and converges this host's sandboxes on its assignments.

Level-triggered: every round compares what the controller wants (assignments, long-polled)
with what the drivers have, and starts, stops or destroys sandboxes to match, reporting each
outcome. Work on one sandbox runs as one task at a time; a round skips sandboxes with work in
flight and the next round sees its result. The poll never waits for a round: each answer's
network state (security groups, DNS, overlay peers) is applied as soon as it arrives, on a
thread of its own, and rounds run in a task of their own on the latest answer. A restarted
agent re-adopts its running sandboxes (driver recovery), starts those it had created but not
yet started, and reports their states again; reports are idempotent on the controller.
The agent never touches the controller's store: all it knows comes through /agent/v1.
"""

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from hutch.agent.idle import PERIOD as IDLE_PERIOD
from hutch.agent.idle import Idleness
from hutch.agent.images import import_image, registry_client, roots_for
from hutch.agent.link import ControllerLink
from hutch.agent.runtimes import RUNTIMES, node_dir, open_driver
from hutch.agent.sandbox import RunRequest, build_spec
from hutch.agent.telemetry import Observed, Sampler, node_sample
from hutch.config import Settings
from hutch.files import write_private
from hutch.http import tls
from hutch.images.pull import pull
from hutch.images.spool import disk_full_is_insufficient
from hutch.images.store import Allowance, StoredImage, is_digest_or_id
from hutch.model.addressing import ip_literals
from hutch.model.errors import (
    Conflict,
    HutchError,
    Invalid,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from hutch.model.machine import Desired, MachineState
from hutch.model.sandbox import (
    DiskIO,
    ExitStatus,
    Reading,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
    VolumeMount,
    parse_signal,
    validate_sandbox_id,
)
from hutch.network import dns, nft
from hutch.network.claim import NamespaceClaim, claim
from hutch.network.node import NetworkOptions, NodeNetwork, Peer
from hutch.runtime import host
from hutch.runtime.driver import SandboxDriver
from hutch.storage.backend import Backend
from hutch.wire.networks import GroupRules
from hutch.wire.nodes import (
    Assignment,
    Assignments,
    JoinToken,
    MachineReport,
    NodeRegister,
)
from hutch.wire.telemetry import Samples

log = logging.getLogger("hutch.agent")
T = TypeVar("T")
DISK_QUERIES = 16  # QMP queries of sandboxes' disk counters at once
POLL_WAIT = 25.0  # seconds a long poll may hang; every answer is a full reconcile
JOIN_RETRY_MAX = 10.0  # seconds between attempts to join a controller that cannot be reached


@dataclass(frozen=True, slots=True)
class Identity:
    node_id: str
    credential: str
    controller_key: str
    controller: str


def _hosts_of(*urls: str) -> list[str]:
    """The IP literals among `urls`' hosts, as /32 or /128 CIDRs."""
    return host_cidrs(urlsplit(url).hostname or "" for url in urls)


def host_cidrs(addresses: Iterable[str]) -> list[str]:
    """The IP literals among `addresses` (`ip_literals`), as /32 or /128 CIDRs."""
    return [f"{a}/{ipaddress.ip_address(a).max_prefixlen}" for a in ip_literals(addresses)]


def group_rules(machines: list[Assignment], groups: list[GroupRules]) -> dict[str, nft.Groups]:
    """Sandbox id -> its security groups' rules (sandboxes in no group, or with no network,
    are left out: their network's machines reach them freely, and they send as their network
    lets them). Egress rules are enforced only if one of its groups has one: a sandbox whose
    groups have none sends as one in no group. A rule whose remote is a group allows that
    group's machines' addresses, wherever they run: the controller sends every member's
    (`GroupRules.members`), not only those of this node's machines."""
    by_id = {g.id: g for g in groups}
    out: dict[str, nft.Groups] = {}
    for a in machines:
        if not a.security_groups or not a.networks:
            continue
        allows: dict[str, list[nft.Allow]] = {"ingress": [], "egress": []}
        for group_id in a.security_groups:
            group = by_id.get(group_id)
            for rule in group.rules if group else []:
                if rule.direction not in allows:
                    continue
                if rule.remote_group:
                    remote = by_id.get(rule.remote_group)
                    members = remote.members if remote else []
                    remotes = tuple(f"{m}/{32 if '.' in m else 128}" for m in members)
                else:
                    remotes = (rule.remote_cidr,) if rule.remote_cidr else ()
                allow = nft.Allow(rule.protocol, rule.port_min, rule.port_max, remotes)
                allows[rule.direction].append(allow)
        ingress = tuple(dict.fromkeys(allows["ingress"]))
        egress = tuple(dict.fromkeys(allows["egress"])) or None
        out[a.sandbox] = nft.Groups(ingress, egress)
    return out


def _underlay_of(url: str) -> str | None:
    """The advertised URL's host as the overlay's address, if it is an IP other than loopback
    (agents sharing a host's loopback cannot each have VXLAN port 4789 on it)."""
    try:
        addr = ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        return None
    return None if addr.is_loopback else str(addr)


class NodeAgent:
    def __init__(
        self,
        settings: Settings,
        *,
        controller: str,
        join_secret: str,
        name: str,
        advertise: str,
        labels: dict[str, str] | None = None,
        domain: str = "",
        namespace: NamespaceClaim | None = None,
    ) -> None:
        self.settings = settings
        # This agent's claim on the network namespace it manages (one agent per namespace: see
        # network/claim.py), taken by `open` unless the caller took it already.
        self.namespace = namespace
        self.dir = node_dir(settings)
        self.controller = controller
        self.join_secret = join_secret
        self.name = name
        self.advertise = advertise  # the URL the controller reaches this agent's API at
        self.labels = labels or {}
        self.domain = domain
        self.drivers: dict[str, SandboxDriver] = {}
        self.roots = roots_for(settings)  # once: opening the image store makes its schema
        assert self.roots.store is not None
        self.store = self.roots.store
        self.identity: Identity | None = None
        self.link = ControllerLink(controller)
        self._work: dict[str, asyncio.Task[None]] = {}  # sandbox -> start/stop/destroy in flight
        self._watch: dict[str, asyncio.Task[None]] = {}  # sandbox -> waiting for its exit
        # sandbox -> set when a suspend under way is wanted running again (see `_suspend`)
        self._unsuspend: dict[str, asyncio.Event] = {}
        self._reported: dict[str, str] = {}  # sandbox -> last state reported
        self._assignments: dict[str, Assignment] = {}
        self._latest: Assignments | None = None  # the newest answer, for the next round
        self._answered = asyncio.Event()  # set when `_latest` is newer than the last round's
        # The node's network changes run here, not in the default pool, where image unpacking,
        # root disks and crun runs of starting sandboxes would queue them.
        self._net_thread = ThreadPoolExecutor(1, thread_name_prefix="hutch-net")
        # NAME.PROJECT.internal for the machines of each network, on its bridge's gateway:53
        self.dns = dns.DnsServer()
        # The node's volumes: made on first use (the local backend may make its pool then).
        self._volumes: Backend | None = None
        self._volumes_lock = threading.Lock()
        self.network = NodeNetwork(
            NetworkOptions(
                state_dir=self.dir,
                mtu=settings.network_mtu,
                blocked=(
                    *settings.network_blocked,
                    *_hosts_of(controller, advertise),
                    *host_cidrs([settings.network_underlay or ""]),
                ),
                underlay=settings.network_underlay or _underlay_of(advertise),
            ),
            dns=self.dns,
        )
        # Connections to idling machines' ports, reported; the waker of those that idled.
        self.idle = Idleness(self.network, self._in_net_thread, self._activity, self._wake_up)
        # What the sandboxes use, spooled here until the controller takes it.
        self.sampler = Sampler(self.dir / "samples", settings.sample_spool, self._post_samples)

    def volumes(self) -> Backend:
        """The node's storage backend: a LocalBackend at `volumes_root()`, made on first use
        (blocking: call it from a thread)."""
        with self._volumes_lock:
            if self._volumes is None:
                from hutch.storage.local import LocalBackend  # noqa: PLC0415 - its pool on demand

                self._volumes = LocalBackend(self.volumes_root(), self.volume_pool_bytes())
            return self._volumes

    def volumes_made(self) -> Backend | None:
        """The node's storage backend if it was made, without making it."""
        return self._volumes

    def volumes_root(self) -> Path:
        return self.dir / "volumes"

    def volume_pool_bytes(self) -> int | None:
        """The volume pool's size the settings ask for (None: the backend's default)."""
        return (self.settings.volume_pool_mib << 20) or None

    # -- start-up ----------------------------------------------------------------------------------

    def claim_namespace(self) -> None:
        """Claim the network namespace this agent manages, if it has not yet; Conflict, naming
        the holder, if another agent manages it (its tables and bridges would be replaced)."""
        if self.namespace is None:
            self.namespace = claim(self.network.opts.netns, self.settings.state_dir)

    async def open(self) -> Identity:
        """Claim the network namespace (Conflict if another agent manages it), open the
        drivers (re-adopting sandboxes), and join the controller once."""
        self.claim_namespace()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for runtime in RUNTIMES:
            try:
                driver = open_driver(
                    self.settings,
                    runtime,
                    sandboxes_dir=self.dir / "sandboxes",
                    network=self.network,
                )
            except HutchError as e:
                log.warning("runtime %s is not available on this node: %s", runtime, e.message)
                continue
            await driver.recover()
            self.drivers[runtime] = driver
        if not self.drivers:
            raise Invalid("no runtime works on this host: see `hutch setup`")
        await self.dns.start()  # before the networks: reconcile opens its sockets
        # The node's links and rules, made to match the sandboxes that exist (left from an
        # earlier life of this agent, or none): nothing duplicated, nothing left over.
        infos = [(d, info) for d in self.drivers.values() for info in await d.sandboxes()]
        specs = [await driver.spec(info.id) for driver, info in infos]
        suspended = [info.id for _, info in infos if info.state is SandboxState.SUSPENDED]
        try:
            await self._in_net_thread(self.network.reconcile, specs, suspended)
        except HutchError as e:
            log.warning("the node's networks could not be reconciled: %s", e.message)
        await self._trust()
        self.identity = self._load_identity() or await self._join()
        self.link.credential = self.identity.credential
        return self.identity

    async def _trust(self) -> None:
        """HTTPS to the controller: trust the CA saved at the first join, else the one the join
        token pins (fetched, then checked against the pin), else the system's CAs."""
        if not self.controller.startswith("https://"):
            return
        saved = self.dir / "controller-ca.pem"
        try:
            pin = JoinToken.parse(self.join_secret).ca_pin
        except Invalid:
            pin = ""  # a plain join secret pins no CA
        if not saved.exists() and pin:
            pem = await self.link.fetch_ca()
            tls.check_pin(pem, pin)
            saved.write_bytes(pem)
        if saved.exists():
            await self.link.close()
            self.link = ControllerLink(self.controller, verify=tls.client_context(saved))

    def _load_identity(self) -> Identity | None:
        """The node this host joined as, whatever URL it reaches the controllers by now (another
        port, another controller of the cluster): one the controllers do not know is refused at
        the first call, and the agent joins anew then."""
        path = self.dir / "identity.json"
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
            return Identity(**json.loads(path.read_text()))
        return None

    async def _join(self) -> Identity:
        caps = {r: d.capabilities() for r, d in self.drivers.items()}
        body = NodeRegister(
            name=self.name,
            address=self.advertise,
            runtimes=list(self.drivers),
            accel=caps["microvm"].accel if "microvm" in caps else "none",
            cpus=host.cpus(),
            memory_mib=max(host.memory_mib() - host.HOST_RESERVE_MIB, 0),
            disk_mib=shutil.disk_usage(self.dir).free >> 20,
            overhead_mib={r: c.overhead_mib for r, c in caps.items()},
            labels=self.labels,
            domain=self.domain,
        )
        delay = 0.5
        while True:  # a controller that is not up yet (or restarting) is waited for
            try:
                joined = await self.link.register(self.join_secret, body)
                break
            except Unavailable as e:
                log.warning("%s; trying again in %.1f s", e.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, JOIN_RETRY_MAX)
        log.info(
            "joined controller %s as node %s (id %s)", self.controller, self.name, joined.node_id
        )
        identity = Identity(
            joined.node_id, joined.credential, joined.controller_key, self.controller
        )
        write_private(self.dir / "identity.json", json.dumps(dataclasses.asdict(identity)))
        return identity

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        assert self.identity is not None
        heartbeat = asyncio.create_task(self._heartbeat())
        rounds = asyncio.create_task(self._rounds())
        looks = asyncio.create_task(self._idle_looks())
        sampling = asyncio.create_task(self._sampling())
        revision = -1
        try:
            while True:
                try:
                    answer = await self.link.assignments(self.identity.node_id, revision, POLL_WAIT)
                except Unauthenticated as e:  # removed (`hutch node rm`): join as a new node
                    log.warning("%s: joining the controller again", e.message)
                    (self.dir / "identity.json").unlink(missing_ok=True)
                    self.identity = await self._join()
                    self.link.credential = self.identity.credential
                    revision = -1
                    continue
                except HutchError as e:
                    log.warning("cannot get assignments: %s", e.message)
                    await asyncio.sleep(1.0)
                    continue
                revision = answer.revision
                log.debug("assignments at revision %d", revision)
                # Before the round that may start sandboxes: a new one is plugged with its
                # groups' rules. And never behind a round's work: the next poll follows at once.
                await self.update_groups(answer)
                await self.update_infrastructure(answer)
                self.update_dns(answer)
                await self.update_overlay(answer)
                await self.update_sleepers(answer)
                self._latest = answer
                self._answered.set()
        finally:
            heartbeat.cancel()
            rounds.cancel()
            looks.cancel()
            sampling.cancel()

    async def _rounds(self) -> None:
        """Reconcile on the newest answer, one round at a time; answers that come during a
        round are folded into the next (each is the whole picture)."""
        while True:
            await self._answered.wait()
            self._answered.clear()
            answer = self._latest
            assert answer is not None
            try:
                await self.reconcile(answer.machines)
                log.debug("round on revision %d done", answer.revision)
            except Exception:  # one bad round must not stop the node; the next answer retries
                log.exception("reconciling failed")
                await asyncio.sleep(1.0)

    async def _in_net_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._net_thread, fn, *args)

    async def _heartbeat(self) -> None:
        assert self.identity is not None
        while True:
            with contextlib.suppress(HutchError):
                await self.link.heartbeat(self.identity.node_id, self.advertise)
            await asyncio.sleep(self.settings.heartbeat_interval)

    def update_dns(self, answer: Assignments) -> None:
        """Each hosted network's DNS records from the controller's peer list,
        `Assignments.peers` (PeerView: network_id, machine, name, project, ip4, ip6; see
        `dns.Peer`). Every answer replaces all zones: a machine gone from the list is gone from
        DNS at once."""
        self.dns.sync(dns.zones(answer.peers))

    async def update_groups(self, answer: Assignments) -> None:
        """Each sandbox's security groups, as ingress and egress rules on its ports: applied
        before the round starts anything (a new sandbox is plugged with them), and to running
        sandboxes as soon as a group's rules change (the controller bumps this node's revision,
        which ends the long poll)."""
        rules = group_rules(answer.machines, answer.groups)
        try:
            await self._in_net_thread(self.network.set_groups, rules)
        except HutchError as e:
            log.warning("security groups could not be applied: %s", e.message)
        except Exception:  # the round goes on; the next answer retries
            log.exception("security groups could not be applied")

    async def update_infrastructure(self, answer: Assignments) -> None:
        """The cluster's nodes' and controllers' addresses (`Assignments.infrastructure`),
        blocked to every sandbox: a node that joins is closed with the next answer, without
        touching the sandboxes. An older controller sends none: the agent's own list stays."""
        try:
            await self._in_net_thread(
                self.network.set_infrastructure, host_cidrs(answer.infrastructure)
            )
        except HutchError as e:  # the next answer retries
            log.warning("cannot block the cluster's addresses: %s", e.message)

    async def update_overlay(self, answer: Assignments) -> None:
        """The VXLAN entries for the machines on other nodes of the networks this node hosts,
        from the same peer list (the whole set each time; entries of peers gone are removed)."""
        peers = [Peer(p.network_id, p.mac, p.ip4, p.ip6, p.underlay) for p in answer.peers]
        try:
            await self._in_net_thread(self.network.set_peers, peers)
        except HutchError as e:  # the next answer retries
            log.warning("cannot update the overlay: %s", e.message)

    async def update_sleepers(self, answer: Assignments) -> None:
        """Machines that idled to suspended: a connection to their published ports wakes them
        (see agent/idle.py); those that run again are forwarded to directly again."""
        try:
            await self.idle.sleepers(answer.machines)
        except HutchError as e:  # the next answer retries
            log.warning("cannot steer idle machines' ports: %s", e.message)

    async def _idle_looks(self) -> None:
        while True:
            if self._latest is not None:
                try:
                    await self.idle.look(self._latest.machines)
                except HutchError as e:
                    log.warning("cannot report connections to idling machines: %s", e.message)
                except Exception:  # the next look retries
                    log.exception("looking at idling machines' connections failed")
            await asyncio.sleep(IDLE_PERIOD)

    async def _sampling(self) -> None:
        interval = self.settings.sample_interval
        while True:
            started = time.monotonic()
            try:
                await self.sample()
            except Exception:  # the next turn retries; what was spooled stays
                log.exception("sampling the sandboxes failed")
            await asyncio.sleep(max(interval - (time.monotonic() - started), 0.0))

    async def sample(self) -> int:
        """One turn of telemetry: read every sandbox (files on a thread, QMP queries a few at a
        time), spool the samples, post the spool. How many machine samples it took."""
        targets = [(d, sid) for d in self.drivers.values() for sid in d.sandbox_ids()]

        def read() -> list[tuple[str, Reading]]:
            out = []
            for driver, sid in targets:
                with contextlib.suppress(HutchError, OSError, ValueError):
                    out.append((sid, driver.reading(sid)))
            return out

        readings = await asyncio.to_thread(read)
        try:
            nics = await self._in_net_thread(self.network.traffic)
        except (HutchError, OSError) as e:
            log.warning("cannot read the sandboxes' NIC counters: %s", e)
            nics = {}
        gate = asyncio.Semaphore(DISK_QUERIES)
        drivers = {sid: d for d, sid in targets}

        async def disks(sid: str) -> dict[str, DiskIO]:
            async with gate:
                try:
                    return await drivers[sid].disk_io(sid)
                except HutchError as e:
                    log.debug("no disk counters of %s: %s", sid, e)
                    return {}

        ios = await asyncio.gather(*(disks(sid) for sid, _ in readings))
        observed = [
            Observed(sid, r, io, nics.get(sid)) for (sid, r), io in zip(readings, ios, strict=True)
        ]
        taken = await asyncio.to_thread(self.sampler.take, observed, node_sample())
        await self.sampler.flush()
        return taken

    async def _post_samples(self, samples: Samples) -> None:
        assert self.identity is not None
        await self.link.samples(self.identity.node_id, samples)

    async def _activity(self, seen: dict[str, float]) -> None:
        assert self.identity is not None
        await self.link.activity(self.identity.node_id, seen)

    async def _wake_up(self, machine: str, generation: int, port: int) -> None:
        assert self.identity is not None
        await self.link.wake(self.identity.node_id, machine, generation, port)

    async def close(self) -> None:
        await self.idle.close()
        await self.dns.close()
        for task in [*self._work.values(), *self._watch.values()]:
            task.cancel()
        for driver in self.drivers.values():
            await driver.close()
        await self.link.close()
        self._net_thread.shutdown(wait=False)
        if self.namespace is not None:
            self.namespace.release()
            self.namespace = None

    async def reconcile(self, assignments: list[Assignment]) -> None:
        wanted = {a.sandbox: a for a in assignments}
        self._assignments = wanted
        have: dict[str, tuple[SandboxDriver, SandboxInfo]] = {}
        for driver in self.drivers.values():
            for info in await driver.sandboxes():
                have[info.id] = (driver, info)
        for sandbox, (driver, _) in have.items():
            if sandbox not in wanted and sandbox not in self._work:  # an old generation, or gone
                self._spawn(sandbox, self._destroy(driver, sandbox, None))
        for a in assignments:
            if a.sandbox in self._work:
                if a.desired is Desired.RUNNING and a.sandbox in self._unsuspend:
                    self._unsuspend[a.sandbox].set()
                continue
            entry = have.get(a.sandbox)
            if a.desired is Desired.DESTROYED and entry is not None:
                self._spawn(a.sandbox, self._destroy(entry[0], a.sandbox, a))
            elif entry is None:
                if a.desired in (Desired.RUNNING, Desired.READY) and not a.state.finished:
                    self._spawn(a.sandbox, self._start(a))
                else:
                    await self._not_started(a)
            else:
                driver, info = entry
                live = info.state in (
                    SandboxState.CREATED, SandboxState.RUNNING, SandboxState.SUSPENDED
                )  # fmt: skip
                if a.desired is Desired.STOPPED and live:
                    self._spawn(a.sandbox, self._stop(driver, a))
                elif a.desired is Desired.SUSPENDED and info.state is SandboxState.RUNNING:
                    self._spawn(a.sandbox, self._suspend(driver, a))
                elif info.state is SandboxState.SUSPENDED and not a.state.finished:
                    # (One that failed to resume stays as it is until it is destroyed.)
                    if a.desired is Desired.RUNNING:
                        self._spawn(a.sandbox, self._continue(driver, a))
                    else:
                        await self._report(a, MachineState.SUSPENDED)
                elif info.state is SandboxState.CREATED and a.desired is Desired.RUNNING:
                    self._spawn(a.sandbox, self._resume(driver, a))
                elif info.state is SandboxState.CREATED and a.desired is Desired.READY:
                    await self._report(a, MachineState.READY)  # a pool's, made: said again
                elif info.state is SandboxState.RUNNING:
                    await self._report(a, MachineState.RUNNING)
                    self._watch_exit(driver, a)
                elif info.exit is not None:
                    await self._report_exit(a, info.exit)

    # -- work on one sandbox -----------------------------------------------------------------------

    def _spawn(self, sandbox: str, work: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("work on sandbox %s failed", sandbox)
            finally:
                self._work.pop(sandbox, None)

        self._work[sandbox] = asyncio.create_task(run())

    async def _not_started(self, a: Assignment) -> None:
        """Tell the controller the end of a sandbox that is not there and will not be."""
        if a.desired is Desired.DESTROYED:
            await self._report(a, MachineState.DESTROYED)
        elif a.desired is Desired.STOPPED and not a.state.finished:
            await self._report(a, MachineState.EXITED, error="stopped before it started")

    async def _start(self, a: Assignment) -> None:
        delay = a.start_after - time.time()
        if delay > 0:
            await asyncio.sleep(delay)  # a restart's backoff
            # Rounds meanwhile left this sandbox to this task: if what they saw says it is no
            # longer to run (stopped, removed, moved), it does not start.
            now = self._assignments.get(a.sandbox)
            if now is None or now.desired is not Desired.RUNNING:
                if now is not None:
                    await self._not_started(now)
                return
            a = now
        # Told while the sandbox is made, not before: a round trip less to its first answer.
        # (A pool's machine says it is ready once made, nothing before.)
        pooled = a.desired is Desired.READY
        starting = asyncio.create_task(
            asyncio.sleep(0) if pooled else self._report(a, MachineState.STARTING)
        )
        driver = self.drivers.get(a.runtime)
        try:
            if driver is None:
                raise Invalid(f"this node has no {a.runtime} runtime")
            spec, image = await self._spec(driver, a)
            await driver.create(spec)
            if a.pool_snapshot:
                # Taken from its pool while it was made: started as the machine it is now.
                if (now := self._assignments.get(a.sandbox, a)).desired is Desired.READY:
                    await self._report(a, MachineState.READY)
                    return
                a = now
                spec, image = await self._spec(driver, a)
                await driver.start(spec.id, spec)
            else:
                await driver.start(spec.id)
            await starting
        except HutchError as e:
            if driver is not None:
                with contextlib.suppress(HutchError):
                    await driver.destroy(a.sandbox, force=True)
            await starting
            await self._report(a, MachineState.FAILED, error=e.message)
            return
        finally:
            starting.cancel()  # done, unless this was cancelled or failed: no report follows
        await self._report(a, MachineState.RUNNING, image=image)
        self._watch_exit(driver, a)

    async def _spec(self, driver: SandboxDriver, a: Assignment) -> tuple[SandboxSpec, StoredImage]:
        """The sandbox assignment `a` asks for, on its image (pulled if need be) and volumes."""
        mounts = await self._volume_mounts(a)
        image = await self._ensure_image(a)
        request = RunRequest.of(a, image.digest, mounts)
        roots = replace(self.roots, project=a.project, allow_paths=False)
        spec, _ = await asyncio.to_thread(build_spec, request, driver.capabilities(), roots)
        if snapshot := a.from_snapshot or a.pool_snapshot:
            spec = replace(spec, restore_from=str(self.snapshot_files(snapshot)))
        return replace(spec, template=a.template), image

    async def _volume_mounts(self, a: Assignment) -> tuple[VolumeMount, ...]:
        """The assignment's volumes as its sandbox gets them (from this node's storage backend),
        once no other sandbox of this node has any of them: one being destroyed (an older
        generation, a machine destroyed while this node was away) is waited for. NotFound for a
        volume this node does not hold; Conflict for one another sandbox still has."""
        if not a.volumes:
            return ()
        wanted = {v.volume_id: v.name or v.volume_id for v in a.volumes}
        while holders := await self._volume_holders(a.sandbox, set(wanted)):
            going = [self._work[h] for h in holders if h in self._work]
            if not going:
                raise Conflict(
                    f"volume {', '.join(wanted.values())} is still in use by sandbox "
                    f"{', '.join(holders)} on this node"
                )
            await asyncio.gather(*(asyncio.shield(w) for w in going), return_exceptions=True)

        def mounts() -> tuple[VolumeMount, ...]:
            backend = self.volumes()
            out = []
            for v in a.volumes:
                try:
                    info = backend.info(v.volume_id)
                except NotFound:
                    raise NotFound(
                        f"volume {v.name or v.volume_id} ({v.volume_id}) is not on node {self.name}"
                    ) from None
                source = backend.attach_source(v.volume_id).path
                out.append(VolumeMount(v.volume_id, source, v.target, v.read_only, info.fs))
            return tuple(out)

        return await asyncio.to_thread(mounts)

    async def _volume_holders(self, sandbox: str, volume_ids: set[str]) -> list[str]:
        """The other sandboxes on this node that have any of `volume_ids`."""
        holders = []
        for driver in self.drivers.values():
            for info in await driver.sandboxes():
                if info.id == sandbox:
                    continue
                with contextlib.suppress(NotFound):
                    spec = await driver.spec(info.id)
                    if volume_ids & {v.volume_id for v in spec.volumes}:
                        holders.append(info.id)
        return holders

    async def _resume(self, driver: SandboxDriver, a: Assignment) -> None:
        """Start a sandbox created but never started: the agent stopped between the two (a
        micro-VM boots for seconds), and its driver re-adopted it booted, waiting; or a warm
        pool's machine a run has taken, started as that machine."""
        image = None
        try:
            if a.pool_snapshot:
                spec, image = await self._spec(driver, a)
                await driver.start(a.sandbox, spec)
            else:
                await driver.start(a.sandbox)
        except HutchError as e:
            with contextlib.suppress(HutchError):
                await driver.destroy(a.sandbox, force=True)
            await self._report(a, MachineState.FAILED, error=e.message)
            return
        with contextlib.suppress(NotFound):  # what `_start` resolved it to, for the record
            image = image or self.store.resolve(a.image_digest or a.image, a.project)
        await self._report(a, MachineState.RUNNING, image=image)
        self._watch_exit(driver, a)

    async def _suspend(self, driver: SandboxDriver, a: Assignment) -> None:
        """Save the sandbox and end its process; one that cannot be suspended runs on, and the
        controller hears why (it wants it running again). Wanted running again while it is
        being saved (a resume), the driver's resume cancels the save rather than the node
        waiting for it to end and then resuming."""
        self._unwatch(a.sandbox)  # its process ends without the workload ending
        unwanted = self._unsuspend[a.sandbox] = asyncio.Event()
        saving = asyncio.ensure_future(driver.suspend(a.sandbox))
        waiting = asyncio.ensure_future(unwanted.wait())
        try:
            await asyncio.wait([saving, waiting], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            del self._unsuspend[a.sandbox]
        resumed = not saving.done()  # wanted running again first: cancel the save
        if resumed:
            try:
                await driver.resume(a.sandbox)
            except HutchError as e:  # saved before the cancel came, and not restored
                await self._report(a, MachineState.FAILED, error=f"could not resume: {e.message}")
                return
        try:
            await saving
        except HutchError as e:  # cancelled, or it failed: either way it ran on
            self._watch_exit(driver, a)
            self._reported.pop(a.sandbox, None)
            await self._report(a, MachineState.RUNNING, error=f"not suspended: {e.message}")
            return
        if resumed:  # saved before the cancel came: that resume restored it
            self._watch_exit(driver, a)
            return
        await self._report(a, MachineState.SUSPENDED)
        if (now := self._assignments.get(a.sandbox)) is not None and now.desired is Desired.RUNNING:
            await self._continue(driver, now)  # resumed just as the save ended

    async def _continue(self, driver: SandboxDriver, a: Assignment) -> None:
        """Resume a suspended sandbox where it was; one that cannot be resumed failed."""
        try:
            await driver.resume(a.sandbox)
        except HutchError as e:
            await self._report(a, MachineState.FAILED, error=f"could not resume: {e.message}")
            return
        self._unwatch(a.sandbox)  # a wait from before the suspend: its process is gone
        await self._report(a, MachineState.RUNNING, resumed=True)
        self._watch_exit(driver, a)

    def _unwatch(self, sandbox: str) -> None:
        if (watch := self._watch.pop(sandbox, None)) is not None:
            watch.cancel()

    def snapshot_files(self, snapshot_id: str) -> Path:
        """Where machine snapshot `snapshot_id` is kept on this node (`agent/snapshotapi.py`)."""
        return self.dir / "snapshots" / validate_sandbox_id(snapshot_id)

    async def _ensure_image(self, a: Assignment) -> StoredImage:
        """The image the machine runs: the digest an earlier start recorded, else what its
        name means for its project (own names first, then the catalogue), pulled if need be."""
        wanted = a.image_digest or a.image
        with contextlib.suppress(NotFound):
            return self.store.resolve(wanted, a.project)
        with contextlib.suppress(NotFound):  # no peer has it: a registry may
            return await self._from_peers(a, wanted)
        try:
            async with registry_client(self.settings) as client:
                with self.store.session():
                    await pull(
                        a.image, self.store, client, project=a.project,
                        allowance=Allowance.of(a.image_limits),
                    )  # fmt: skip
        except HutchError as e:  # the project does not have it, and no registry gave it
            gone = (
                f"{a.image_digest}, the image this machine ran, is no longer in its project "
                "or the catalogue (removed?), and "
                if a.image_digest
                else ""
            )
            raise type(e)(f"{gone}cannot pull {a.image}: {e.message}") from e
        try:
            return self.store.resolve(wanted, a.project)
        except NotFound:
            raise NotFound(
                f"{a.image} no longer names {a.image_digest}, the image this machine ran: "
                "recreate the machine to run what it names now"
            ) from None

    async def _from_peers(self, a: Assignment, wanted: str) -> StoredImage:
        """The image from a node that has it (imported or pulled before this one joined),
        through the controller; filed for the same owner, every blob checked by its digest."""
        assert self.identity is not None
        with tempfile.TemporaryFile(dir=self.store.root / "partial") as archive:
            with disk_full_is_insufficient():
                headers = await self.link.image_archive(
                    self.identity.node_id, a.project, wanted, archive
                )
            archive.seek(0)
            # By name, it is filed under that name; by a recorded digest (a restart), under
            # none: the name may mean another image by now.
            names = (a.image,) if wanted == a.image and not is_digest_or_id(a.image) else ()
            await asyncio.to_thread(
                import_image, self.settings, archive, project=a.project,
                public=headers.get("x-hutch-image-source") == "catalogue", names=names,
                allowance=Allowance.of(a.image_limits),
            )  # fmt: skip
        return self.store.resolve(wanted, a.project)

    def _watch_exit(self, driver: SandboxDriver, a: Assignment) -> None:
        if a.sandbox in self._watch:
            return

        async def watch() -> None:
            try:
                status = await driver.wait(a.sandbox)
            except NotFound:
                return
            finally:
                self._watch.pop(a.sandbox, None)
            await self._report_exit(self._assignments.get(a.sandbox, a), status)

        self._watch[a.sandbox] = asyncio.create_task(watch())

    async def _stop(self, driver: SandboxDriver, a: Assignment) -> None:
        sig = parse_signal(a.stop_signal) if a.stop_signal else None
        status = await driver.stop(a.sandbox, a.stop_timeout, sig)
        await self._report_exit(a, status)

    async def _destroy(self, driver: SandboxDriver, sandbox: str, a: Assignment | None) -> None:
        await driver.destroy(sandbox, force=True)
        self._reported.pop(sandbox, None)
        if a is not None:
            await self._report(a, MachineState.DESTROYED)

    # -- reports -----------------------------------------------------------------------------------

    async def _report_exit(self, a: Assignment, status: ExitStatus) -> None:
        if status.failed:
            await self._report(a, MachineState.FAILED, exit_code=status.code, error=status.error)
        else:
            await self._report(a, MachineState.EXITED, exit_code=status.code, oom=status.oom_killed)

    async def _report(
        self,
        a: Assignment,
        state: MachineState,
        *,
        exit_code: int | None = None,
        oom: bool = False,
        error: str = "",
        image: StoredImage | None = None,
        resumed: bool = False,
    ) -> None:
        if self._reported.get(a.sandbox) == state:
            return
        assert self.identity is not None
        report = MachineReport(
            generation=a.generation,
            state=state,
            exit_code=exit_code,
            oom_killed=oom,
            error=error,
            time=time.time(),
            image_digest=image.digest if image else "",
            image_source=image.source if image else "",
            resumed=resumed,
        )
        try:
            await self.link.report(self.identity.node_id, a.machine, report)
        except HutchError as e:
            log.warning("cannot report %s of %s: %s", state, a.machine, e.message)
            return  # the next round reports it again
        self._reported[a.sandbox] = state
