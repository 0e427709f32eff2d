"""OCI images and root file systems: verify, unpack safely, build read-only root disks.

Layering: this package uses `hutch.model` and the standard library only.
"""

from hutch.images.rootdisk import build_root_disk
from hutch.images.rootfs import PreparedRoot, prepare_root
from hutch.images.unpack import Budget, apply_layer
from hutch.images.users import resolve_user

__all__ = [
    "Budget",
    "PreparedRoot",
    "apply_layer",
    "build_root_disk",
    "prepare_root",
    "resolve_user",
]
