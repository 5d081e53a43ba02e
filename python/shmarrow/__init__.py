"""shmarrow: hand Apache Arrow streams between processes on one Linux host through sealed memfds.

The pure-Python consumer is ``python -m shmarrow.recv``; ``shmarrow.summary`` computes the
per-column checksums the C++ library computes too, so both ends of a hand-over can be compared.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:  # written once, in CMakeLists.txt's project(VERSION), and recorded by the installation
    __version__ = _version("shmarrow")
except _PackageNotFoundError:  # a checkout's python/ on sys.path, never installed
    __version__ = "unknown"

# The compiled binding (shmarrow._native, built by `pip install .` at the repository root):
# Producer and Consumer of the C++ library. Without it, the pure-Python modules above still work;
# its names then raise ImportError saying why it is missing.
# extend_path: a checkout's python/ first on sys.path still finds an installed extension.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
_NATIVE_NAMES = (
    "Allocation", "ClosedError", "Consumer", "FlightBridge", "InvalidError", "Producer",
    "RefusedError", "RequestError", "ShmarrowError", "ShmarrowMemoryError", "ShmarrowOSError",
    "ShmarrowTimeoutError", "StreamError", "UnsupportedError",
)
try:
    from ._native_api import (  # noqa: F401
        Allocation, ClosedError, Consumer, FlightBridge, InvalidError, Producer, RefusedError,
        RequestError, ShmarrowError, ShmarrowMemoryError, ShmarrowOSError, ShmarrowTimeoutError,
        StreamError, UnsupportedError,
    )
except ImportError as _native_error:  # no extension: keep the pure-Python package usable
    _native_import_error = _native_error

    def __getattr__(name):
        if name in _NATIVE_NAMES:
            raise ImportError(f"shmarrow.{name} is unavailable: {_native_import_error}")
        raise AttributeError(f"module 'shmarrow' has no attribute {name!r}")
