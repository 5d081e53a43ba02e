"""The ``shmarrow`` command of an installed package: runs the C++ CLI it ships (shmarrow/bin)."""

import os
import sys
from pathlib import Path

import shmarrow


def main() -> None:
    for directory in shmarrow.__path__:
        program = Path(directory) / "bin" / "shmarrow"
        if program.is_file():
            os.execv(program, [str(program), *sys.argv[1:]])
    sys.exit("shmarrow: this installation of the Python package has no C++ command "
             "(shmarrow/bin/shmarrow); it is built with the package by `pip install .`")
