"""memfd seal constants and their names, spelled exactly as the C++ library spells them."""

import fcntl

F_SEAL_SEAL = fcntl.F_SEAL_SEAL
F_SEAL_SHRINK = fcntl.F_SEAL_SHRINK
F_SEAL_GROW = fcntl.F_SEAL_GROW
F_SEAL_WRITE = fcntl.F_SEAL_WRITE
F_SEAL_FUTURE_WRITE = 0x0010  # Linux 5.1; the fcntl module does not export it

# What a consumer needs before mapping a memfd it did not create: the file can neither shrink
# (no SIGBUS under the mapping) nor grow nor change, and the seals themselves are final.
IMMUTABLE_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE

_NAMES = (
    (F_SEAL_SEAL, "F_SEAL_SEAL"),
    (F_SEAL_SHRINK, "F_SEAL_SHRINK"),
    (F_SEAL_GROW, "F_SEAL_GROW"),
    (F_SEAL_WRITE, "F_SEAL_WRITE"),
    (F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
)


def seal_names(mask: int) -> str:
    """The seals in ``mask`` joined by "|" in a fixed order, or "none" (other bits are ignored)."""
    return "|".join(name for bit, name in _NAMES if mask & bit) or "none"
