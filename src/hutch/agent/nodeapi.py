"""/node/v1: the node agent's own API, called by controllers only (they present the node's
controller key): logs, exec and signals of its sandboxes, and its image store. Mounted by the
agent's app (`agent/app.py`) over its `NodeAgent`."""

import asyncio
import base64
import contextlib
import hmac
import json
import signal as _signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, WebSocket, status
from fastapi.responses import StreamingResponse
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from hutch.agent import images
from hutch.agent.node import NodeAgent
from hutch.agent.sandbox import merge_env
from hutch.http.fair import batched, turn
from hutch.http.problems import ws_error
from hutch.images.archive import export_archive
from hutch.images.pull import PullProgress
from hutch.images.spool import disk_full_is_insufficient, spool
from hutch.images.store import Allowance, StoredImage
from hutch.images.users import resolve_user
from hutch.model.errors import HutchError, NotFound, Unauthenticated
from hutch.model.image import parse_ref
from hutch.model.machine import env_entries
from hutch.model.sandbox import ExitStatus, LogRecord, ProcessSpec, Stream, parse_signal
from hutch.runtime.driver import SandboxDriver
from hutch.runtime.supervisor import ProcessInput
from hutch.wire.images import ImagePull, ImageUsage, ImageView, PullEvent
from hutch.wire.machines import ExecStart, LogLine
from hutch.wire.nodes import SignalRequest

STDIN, STDOUT, STDERR = 0, 1, 2


router = APIRouter()


def _agent(conn: HTTPConnection) -> NodeAgent:
    agent: NodeAgent = conn.app.state.agent
    return agent


Agent = Annotated[NodeAgent, Depends(_agent)]


def _authorize(request: Request, agent: Agent) -> None:
    _check(agent, request.headers.get("authorization", ""))


Auth = Annotated[None, Depends(_authorize)]


class Limits:
    """The project's image quotas, as the controller sends them (absent: no limit)."""

    def __init__(self, max_stored: int | None = None, max_unpacked: int | None = None) -> None:
        self.max_stored = max_stored
        self.max_unpacked = max_unpacked

    def of(self) -> Allowance:
        return Allowance(stored=self.max_stored, unpacked=self.max_unpacked)


async def find_driver(agent: NodeAgent, sandbox: str) -> SandboxDriver:
    for driver in agent.drivers.values():
        with contextlib.suppress(NotFound):
            await driver.inspect(sandbox)
            return driver
    raise NotFound(f"no sandbox {sandbox} on this node")


async def _roots_in_use(agent: NodeAgent) -> set[str]:
    in_use: set[str] = set()
    for driver in agent.drivers.values():
        for info in await driver.sandboxes():
            in_use.update(info.root_paths)
    return in_use


@router.get("/node/v1/sandboxes/{sandbox}/logs")
async def logs(
    agent: Agent,
    _: Auth,
    sandbox: str,
    follow: bool = False,
    tail: Annotated[int | None, Query(ge=0)] = None,
    since: Annotated[float | None, Query(ge=0)] = None,
) -> StreamingResponse:
    driver = await find_driver(agent, sandbox)
    # In chunks made in turns: a reader of a large log must not hold the loop.
    return StreamingResponse(
        batched(_log_lines(driver, sandbox, follow, tail, since)),
        media_type="application/x-ndjson",
    )


@router.post("/node/v1/sandboxes/{sandbox}/signal", status_code=status.HTTP_204_NO_CONTENT)
async def send_signal(agent: Agent, _: Auth, sandbox: str, body: SignalRequest) -> Response:
    driver = await find_driver(agent, sandbox)
    await driver.signal(sandbox, parse_signal(body.signal))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.websocket("/node/v1/sandboxes/{sandbox}/exec")
async def exec_(ws: WebSocket, agent: Agent, sandbox: str) -> None:
    await ws.accept()
    try:
        _check(agent, ws.headers.get("authorization", ""))
        start = ExecStart.first_message(await ws.receive_text())
        driver = await find_driver(agent, sandbox)
        spec = await driver.spec(sandbox)
        user = resolve_user(Path(spec.rootfs), start.user) if start.user else spec.process.user
        env = merge_env(
            ("TERM=xterm",) if start.tty else (),  # unless the machine or the caller says
            spec.process.env,
            env_entries(start.env),
        )
        proc = await driver.exec(
            sandbox,
            ProcessSpec(
                args=tuple(start.command),
                env=env,
                cwd=start.workdir or spec.process.cwd,
                user=user,
                stdin=start.stdin,
                tty=start.tty,
                rows=start.rows,
                cols=start.cols,
            ),
        )
    except HutchError as e:
        await ws.send_text(ws_error(e))
        await ws.close()
        return
    feeder = asyncio.create_task(_feed(ws, proc))
    try:
        async for stream, data in proc.output():
            await turn()
            await ws.send_bytes(bytes([STDOUT if stream is Stream.STDOUT else STDERR]) + data)
        await ws.send_text(_exit(await proc.wait()))
    except (WebSocketDisconnect, RuntimeError):
        with contextlib.suppress(HutchError):
            await proc.signal(_signal.SIGKILL)  # the client is gone: so is its process
    finally:
        feeder.cancel()
        with contextlib.suppress(RuntimeError):
            await ws.close()


@router.websocket("/node/v1/sandboxes/{sandbox}/attach")
async def attach(ws: WebSocket, agent: Agent, sandbox: str) -> None:
    """Into the main process (docs/api.md, attach): stdin, resize and signal messages as
    in exec; `attached` first, `exit` when the workload ends. Output stays in the log.
    Leaving does not end the workload, nor its stdin."""
    await ws.accept()
    try:
        _check(agent, ws.headers.get("authorization", ""))
        driver = await find_driver(agent, sandbox)
        spec = await driver.spec(sandbox)
        main = await driver.attach(sandbox)
        attached = {"type": "attached", "tty": spec.process.tty, "stdin": main.stdin_open}
        await ws.send_text(json.dumps(attached))
    except HutchError as e:
        await ws.send_text(ws_error(e))
        await ws.close()
        return
    feeder = asyncio.ensure_future(_feed(ws, main))
    ended = asyncio.ensure_future(driver.wait(sandbox))
    try:
        await asyncio.wait([feeder, ended], return_when=asyncio.FIRST_COMPLETED)
        if ended.done() and not ended.cancelled() and ended.exception() is None:
            await ws.send_text(_exit(ended.result()))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        for task in (feeder, ended):
            task.cancel()
        with contextlib.suppress(RuntimeError):
            await ws.close()


# -- images ------------------------------------------------------------------------------------


@router.get("/node/v1/images")
async def list_images(agent: Agent, _: Auth, project: str) -> list[ImageView]:
    return [_image_view(i) for i in agent.store.images(project)]


@router.get("/node/v1/archive")
async def export_image(agent: Agent, _: Auth, ref: str, project: str) -> StreamingResponse:
    """The image `ref` means for `project`, as an OCI archive (for a peer that lacks it);
    whose it is travels in a header, so the peer files it for the same owner."""
    image = agent.store.resolve(ref, project)
    archive = tempfile.TemporaryFile(dir=agent.store.root / "partial")  # noqa: SIM115 - the body closes it
    try:
        with disk_full_is_insufficient():
            # Unnamed: the peer files it under the name it asked by, or none.
            await asyncio.to_thread(export_archive, agent.store, image.digest, archive)
        archive.seek(0)
    except BaseException:
        archive.close()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        with archive:
            while chunk := await asyncio.to_thread(archive.read, 1 << 20):
                yield chunk

    headers = {"X-Hutch-Image-Source": image.source, "X-Hutch-Image-Digest": image.digest}
    return StreamingResponse(chunks(), media_type="application/x-tar", headers=headers)


@router.get("/node/v1/images/{ref:path}")
async def get_image(agent: Agent, _: Auth, ref: str, project: str) -> ImageView:
    return _image_view(agent.store.resolve(ref, project))


@router.delete("/node/v1/images/{ref:path}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_image(
    agent: Agent, _: Auth, ref: str, project: str, public: bool = False
) -> Response:
    await asyncio.to_thread(
        images.remove_image, agent.settings, ref, project=project,
        roots_in_use=await _roots_in_use(agent), public=public,
    )  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/node/v1/projects/{project}/images", status_code=status.HTTP_204_NO_CONTENT)
async def forget_project(agent: Agent, _: Auth, project: str) -> Response:
    await asyncio.to_thread(
        images.forget_project, agent.settings, project, roots_in_use=await _roots_in_use(agent)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/node/v1/projects/{project}/images/usage")
async def image_usage(agent: Agent, _: Auth, project: str) -> ImageUsage:
    usage = await asyncio.to_thread(agent.store.usage, project)
    mib = 1 << 20
    return ImageUsage(
        images_mib=-(-usage.stored // mib), images_unpacked_mib=-(-usage.unpacked // mib)
    )


@router.post("/node/v1/images/pull")
async def pull_image(
    agent: Agent, _: Auth, project: str, body: ImagePull, allowance: Annotated[Limits, Depends()]
) -> StreamingResponse:
    # Refused as a 403 before the stream starts, like the controller does.
    agent.settings.registry_names().check(parse_ref(body.ref).registry)
    return StreamingResponse(
        _pull(agent, project, body, allowance.of()), media_type="application/x-ndjson"
    )


@router.post("/node/v1/images/import", status_code=status.HTTP_201_CREATED)
async def import_image(
    agent: Agent,
    _: Auth,
    request: Request,
    project: str,
    allowance: Annotated[Limits, Depends()],
    name: Annotated[list[str] | None, Query()] = None,
    public: bool = False,
) -> list[ImageView]:
    # Spooled on the store's disk (not /tmp, often RAM), within its free-space floor.
    store = agent.store
    with (
        disk_full_is_insufficient(),
        tempfile.TemporaryFile(dir=store.root / "partial") as archive,
    ):
        await spool(
            request.stream(), archive, floor=store.free_floor,
            limit=allowance.max_stored or agent.settings.max_unpacked_bytes,
            quota=allowance.max_stored is not None,
        )  # fmt: skip
        archive.seek(0)
        found = await asyncio.to_thread(
            images.import_image,
            agent.settings,
            archive,
            project=project,
            public=public,
            names=tuple(name or ()),
            allowance=allowance.of(),
        )
    return [_image_view(i) for i in found]


def _exit(result: ExitStatus) -> str:
    """A session's last message: how its process ended."""
    return json.dumps(
        {"type": "exit", "exit_code": result.code, "signal": result.signal, "error": result.error}
    )


def _check(agent: NodeAgent, header: str) -> None:
    scheme, _, value = header.partition(" ")
    expected = agent.identity.controller_key if agent.identity else ""
    if (
        scheme.lower() != "bearer"
        or not expected
        or not hmac.compare_digest(value.strip(), expected)
    ):
        raise Unauthenticated("this node only answers its controllers")


def _image_view(image: StoredImage) -> ImageView:
    return ImageView.mirroring(
        image,
        id=image.digest,
        names=list(image.names),
        exposed_ports=list(image.config.exposed_ports),
    )


def _line(record: LogRecord) -> bytes:
    stream: Literal["stdout", "stderr"] = "stdout" if record.stream is Stream.STDOUT else "stderr"
    if record.skipped:
        line = LogLine(stream=stream, time=record.time_ns / 1e9, data="", skipped=record.skipped)
        return line.model_dump_json().encode() + b"\n"
    text = record.data.decode("utf-8", "replace")
    exact = text.encode() == record.data
    line = LogLine(
        stream=stream,
        time=record.time_ns / 1e9,
        data=text,
        data_b64=None if exact else base64.b64encode(record.data).decode(),
    )
    return line.model_dump_json().encode() + b"\n"


async def _log_lines(
    driver: SandboxDriver, sandbox: str, follow: bool, tail: int | None, since: float | None
) -> AsyncIterator[bytes]:
    """The log as NDJSON, a chunk of output (many lines, up to 64 KiB) per record: from the
    last `tail` lines when it is given, then, with `follow`, what is written until the sandbox
    ends. Bytes the log dropped before anyone read them come as records with `skipped`."""
    async for record in driver.logs(sandbox, follow=follow, tail=tail):
        if since is None or record.time_ns / 1e9 >= since:
            yield _line(record)


async def _feed(ws: WebSocket, proc: ProcessInput) -> None:
    """Client -> process: stdin bytes, close_stdin, signals and resizes. One the process
    refuses (stdin closed, a bad signal) is dropped; the next ones still go."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            with contextlib.suppress(HutchError, ValueError):
                await _apply(message, proc)


async def _apply(message: Any, proc: ProcessInput) -> None:
    data = message.get("bytes")
    if data:
        if data[0] == STDIN:
            await proc.write(data[1:])
        return
    text = message.get("text")
    if not text:
        return
    control = json.loads(text)
    if not isinstance(control, dict):
        return
    if control.get("type") == "close_stdin":
        await proc.close_stdin()
    elif control.get("type") == "signal":
        await proc.signal(parse_signal(str(control.get("signal", "SIGTERM"))))
    elif control.get("type") == "resize":
        rows, cols = control.get("rows"), control.get("cols")
        if isinstance(rows, int) and isinstance(cols, int):
            await proc.resize(rows, cols)


async def _pull(
    agent: NodeAgent, project: str, body: ImagePull, allowance: Allowance
) -> AsyncIterator[bytes]:
    events: asyncio.Queue[PullProgress | None] = asyncio.Queue()

    async def run() -> Any:
        try:
            return await images.pull_image(
                agent.settings, body.ref, project=project, public=body.public,
                progress=events.put_nowait, allowance=allowance,
            )  # fmt: skip
        finally:
            events.put_nowait(None)

    task = asyncio.create_task(run())
    while (event := await events.get()) is not None:
        yield (
            PullEvent(layer=event.layer, status=event.status, done=event.done, total=event.total)
            .model_dump_json()
            .encode()
            + b"\n"
        )
    try:
        image = await task
    except HutchError as e:
        yield PullEvent(error=e.message).model_dump_json().encode() + b"\n"
        return
    yield PullEvent(image=_image_view(image)).model_dump_json().encode() + b"\n"
