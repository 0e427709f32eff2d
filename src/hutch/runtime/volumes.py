"""A sandbox's volumes on the node's side: checking their files, the guest agent's boot
parameter, freezing a mounted volume's file system (FIFREEZE) for a consistent snapshot.

A volume is a raw file of its size on the node (ext4 inside, or a raw block device for
fs="none"). A micro-VM gets it as a virtio-blk disk (serial `hutch-vol-<i>`) that the guest
agent mounts at its target before the switch to the root; a container gets it on a loop device,
mounted on the node and bound into the container by crun. Neither can make the file grow: the
disk is the file's size.
"""

import fcntl
import os
import subprocess
from pathlib import Path

from hutch.model.errors import Invalid, Unavailable
from hutch.model.sandbox import SandboxSpec, VolumeMount

SERIAL = "hutch-vol-{}"  # the virtio-blk serial of volume i (VOL_SERIAL in agent.c)
BOOT_PARAM = "hutch.vols"  # hutch.vols=<i>:<ro|rw>:<ext4|none>:<target>,... (agent.c)
# The guest kernel's command line is at most 2048 bytes on x86 (COMMAND_LINE_SIZE); what the
# rest of it takes leaves about this much for the volumes' targets.
BOOT_PARAM_MAX = 1024
FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
# A freeze the node forgets to undo (its agent died in between) ends by itself after this long:
# the guest agent's FREEZE_MAX_MS, and the container runtime's watchdog.
FREEZE_MAX_S = 10


def check_sources(spec: SandboxSpec) -> None:
    """Invalid unless every volume's file is a regular file on this node."""
    for vol in spec.volumes:
        path = Path(vol.source)
        if not path.is_file():
            raise Invalid(
                f"volume {vol.volume_id}: {vol.source} is not a file on this node"
                + ("" if path.exists() else " (it does not exist)")
            )


def boot_param(volumes: tuple[VolumeMount, ...]) -> str:
    """The guest agent's list of volumes (empty without any): index (the disk's serial), access,
    file system and target, which VolumeMount validated to have no spaces, commas or colons."""
    if not volumes:
        return ""
    entries = ",".join(
        f"{i}:{'ro' if v.read_only else 'rw'}:{v.fs}:{v.target}" for i, v in enumerate(volumes)
    )
    param = f"{BOOT_PARAM}={entries}"
    if len(param) > BOOT_PARAM_MAX:
        raise Invalid(
            f"the volumes' paths take {len(param)} bytes of the guest's kernel command line, "
            f"more than {BOOT_PARAM_MAX}: use shorter paths or fewer volumes"
        )
    return param


def find(spec: SandboxSpec, target: str) -> int:
    """The index of the volume mounted at `target`; Invalid if none is (or it is no file
    system)."""
    for i, vol in enumerate(spec.volumes):
        if vol.target == target:
            if vol.fs == "none":
                raise Invalid(f"volume {vol.volume_id} at {target} has no file system to freeze")
            return i
    raise Invalid(f"sandbox {spec.id} has no volume mounted at {target}")


def set_frozen(mount_point: Path, frozen: bool) -> None:
    """FIFREEZE or FITHAW the file system mounted at `mount_point` (on this node)."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FIFREEZE if frozen else FITHAW, 0)
    except OSError as e:
        what = "freeze" if frozen else "thaw"
        raise Unavailable(f"cannot {what} the file system at {mount_point}: {e.strerror}") from e
    finally:
        os.close(fd)


def thaw_later(mount_point: Path) -> subprocess.Popen[bytes]:
    """A process of its own session that thaws `mount_point` after FREEZE_MAX_S unless it is
    killed first: the node's agent may die while a volume is frozen, and a frozen file system
    blocks every writer until someone thaws it."""
    return subprocess.Popen(
        ["sh", "-c", f'sleep {FREEZE_MAX_S}; exec fsfreeze -u "$0" 2>/dev/null', str(mount_point)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
