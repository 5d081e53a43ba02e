"""shmarrow: hand Apache Arrow streams between processes on one Linux host through sealed memfds.

The pure-Python consumer is ``python -m shmarrow.recv``; ``shmarrow.summary`` computes the
per-column checksums the C++ library computes too, so both ends of a hand-over can be compared.
"""

__version__ = "0.1.0"
