"""Pure data: frozen dataclasses, enums, ids and errors. No I/O."""

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")


def mirrored(cls: type[D], source: object, /, **given: Any) -> D:
    """A `cls` from the fields `given`, and every other field copied from `source`'s attribute
    of the same name: for a conversion between two shapes that mostly mirror each other. A
    field `source` lacks raises AttributeError (state it in `given`) instead of taking a default."""
    names = (f.name for f in dataclasses.fields(cls) if f.name not in given)
    return cls(**given, **{name: getattr(source, name) for name in names})
