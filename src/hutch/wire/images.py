"""Images in the nodes' stores, through the control plane."""

from pydantic import Field

from hutch.wire.common import Request, View


class ImagePull(Request):
    ref: str = Field(min_length=1, max_length=512)
    public: bool = False


class ImageView(View):
    id: str  # manifest digest
    names: list[str]
    size: int  # as stored (compressed)
    unpacked: int = 0  # what its layers unpack to
    created: float
    layers: int
    public: bool  # in the operator's catalogue: every project sees it
    source: str = "project"  # "project": the project's own; "catalogue": the operator's
    exposed_ports: list[str] = []  # its config's ExposedPorts ("80/tcp"): what -p may publish


class ImageUsage(View):
    """What a project's images take in a node's store, in MiB (rounded up)."""

    images_mib: int  # as stored
    images_unpacked_mib: int  # what their layers unpack to


class ImageRemoved(View):
    """What `DELETE /v1/images/{ref}` did."""

    id: str  # the image's manifest digest
    machines: list[str] = []  # with force: the project's machines that used it (by name)


class PullEvent(View):
    """One line of a pull's NDJSON stream: progress, then the image (or an error)."""

    layer: str = ""
    status: str = ""
    done: int = 0
    total: int = 0
    image: ImageView | None = None
    error: str | None = None
