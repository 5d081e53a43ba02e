"""shmarrow: hand Apache Arrow streams between processes on one Linux host through shared memory.

:class:`Producer` publishes record batches, built in its shared memory with any pyarrow function
(:attr:`Producer.memory_pool`); :class:`Consumer` receives them without a copy. ``python -m
shmarrow.recv`` reports on a stream as ``shmarrow recv`` does; ``shmarrow.summary`` computes the
per-column checksums the C++ library computes too, so both ends can be compared.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:  # written once, in CMakeLists.txt's project(VERSION), and recorded by the installation
    __version__ = _version("shmarrow")
except _PackageNotFoundError:  # a checkout's python/ on sys.path, never installed
    __version__ = "unknown"

__all__ = [
    "Allocation", "ClosedError", "Consumer", "FlightBridge", "InvalidError", "Producer",
    "RefusedError", "RequestError", "ShmarrowError", "ShmarrowMemoryError", "ShmarrowOSError",
    "ShmarrowTimeoutError", "StreamError", "UnsupportedError", "__version__",
]

# The compiled binding (shmarrow._native, built by `pip install .` at the repository root):
# Producer and Consumer of the C++ library. Without it, the pure-Python modules above still work;
# its names then raise ImportError saying why it is missing.
# extend_path: a checkout's python/ first on sys.path still finds an installed extension.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
try:
    from ._native_api import (  # noqa: F401
        Allocation, ClosedError, Consumer, FlightBridge, InvalidError, Producer, RefusedError,
        RequestError, ShmarrowError, ShmarrowMemoryError, ShmarrowOSError, ShmarrowTimeoutError,
        StreamError, UnsupportedError,
    )
except ImportError as _native_error:  # no extension: keep the pure-Python package usable
    _native_import_error = _native_error

    def __getattr__(name: str) -> object:
        if name in __all__:
            raise ImportError(f"shmarrow.{name} is unavailable: {_native_import_error}")
        raise AttributeError(f"module 'shmarrow' has no attribute {name!r}")
