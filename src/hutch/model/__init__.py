"""Pure data: frozen dataclasses, enums, ids and errors. No I/O."""
