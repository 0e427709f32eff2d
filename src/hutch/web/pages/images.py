"""Images: the project's and the catalogue's, a pull with its progress as it happens, an
import of an uploaded archive, removal. (A root directory or an OCI layout, which a browser
cannot upload as one file, the CLI packs and imports: the page says how.)"""

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from hutch.model.errors import Conflict, HutchError, NoCapacity, Unavailable
from hutch.services.policy import Action
from hutch.web.render import html, page, pages, see_other
from hutch.web.upload import upload
from hutch.web.visitor import Acting, Visiting, check_csrf, controller
from hutch.wire.images import ImageView, PullEvent

router = pages()
TICK = 0.25  # seconds at least between a pull's progress lines for the same layer and status
PROGRESS = "<!-- progress -->"  # where image_pull.html's events go


@router.get("/ui/images")
async def images(request: Request, v: Visiting) -> HTMLResponse:
    found: list[ImageView] = []
    unavailable = ""
    try:
        found = await controller(request).images.catalog(v.principal, v.project)
    except (NoCapacity, Unavailable) as e:  # the page still says how to pull and import
        unavailable = e.message
    return page(request, v, "images.html", images=found, unavailable=unavailable,
                writable=v.may(Action.IMAGE_WRITE))  # fmt: skip


@router.post("/ui/images/pull")
async def pull(
    request: Request,
    v: Acting,
    ref: Annotated[str, Form(min_length=1, max_length=512)],
    public: Annotated[bool, Form()] = False,
) -> Response:
    """The page streams: its top at once, then a line per progress step (the browser shows
    them as they come, without JavaScript), then the image or the error."""
    events = controller(request).images.pull(v.principal, v.project, ref.strip(), public)
    first = await anext(events)  # a refusal before the pull starts is a 4xx page
    top, bottom = html("image_pull.html", request=request, v=v, ref=ref).split(PROGRESS)

    async def body() -> AsyncIterator[str]:
        yield top
        async for part in _progress(first, events):
            yield part
        yield bottom

    return StreamingResponse(body(), media_type="text/html; charset=utf-8",
                             headers={"Cache-Control": "no-store"})  # fmt: skip


async def _progress(first: PullEvent, rest: AsyncIterator[PullEvent]) -> AsyncIterator[str]:
    last, shown = 0.0, ("", "")
    event: PullEvent | None = first
    try:
        while event is not None:
            step = (event.layer, event.status)
            if event.image or event.error or step != shown or time.monotonic() - last >= TICK:
                yield html("image_pull_event.html", e=event)
                last, shown = time.monotonic(), step
            event = await anext(rest, None)
    except HutchError as e:  # the node failed mid-pull: the page ends with why
        yield html("alert.html", message=e.message)


@router.post("/ui/images/import")
async def import_image(request: Request, v: Visiting) -> Response:
    """A `docker save` or OCI archive, or a root filesystem's tar, streamed to the nodes as it
    is uploaded. The form's CSRF value is checked before a byte of its file is read."""
    sent = await upload(request)
    check_csrf(v, next(iter(sent.values("csrf")), None))
    names = [n.strip() for n in sent.values("name") if n.strip()]
    public = "true" in sent.values("public")
    await controller(request).images.import_(v.principal, v.project, sent.chunks, names, public)
    return see_other("/ui/images")


@router.post("/ui/images/remove")
async def remove(
    request: Request,
    v: Acting,
    ref: Annotated[str, Form(min_length=1, max_length=512)],
    public: Annotated[bool, Form()] = False,
    force: Annotated[bool, Form()] = False,
) -> Response:
    """Refused while machines use the image (409): the page says which, and offers to remove
    it anyway (they run on, but cannot start again without it)."""
    try:
        await controller(request).images.delete(v.principal, v.project, ref, public, force)
    except Conflict as e:
        if force:
            raise
        return page(request, v, "image_remove.html", 409, ref=ref, public=public,
                    message=e.message)  # fmt: skip
    return see_other("/ui/images")
