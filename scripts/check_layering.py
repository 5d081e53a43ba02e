#!/usr/bin/env python3
"""Checks the include layering of the C++ library (docs/design.md, "Layers and vocabulary").

1. include/shmarrow/ includes nothing from src/: a public header's quoted includes are all
   "shmarrow/...".
2. The core (the sources of the `shmarrow` library target in CMakeLists.txt and every header
   they reach through quoted includes) includes no Flight or gRPC header (arrow/flight/*, grpc*):
   only the `shmarrow_flight` target may.
3. The shared vocabulary (Validation, SchemaMatch, MemoryMode, PagePolicy and every *Stats
   struct) is defined in include/shmarrow/types.h only.

Prints each violation as file:line and exits 1 if there is any. `--root DIR` checks another tree.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')
FLIGHT_OR_GRPC = re.compile(r"^(arrow/flight/|grpc)")
VOCABULARY = re.compile(
    r"^\s*(enum\s+class\s+(Validation|SchemaMatch|MemoryMode|PagePolicy)\b|struct\s+\w+Stats\s*\{)")
VOCABULARY_HEADER = "include/shmarrow/types.h"


def includes(path: Path):
    """(line number, delimiter, included name) of each #include in `path`."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = INCLUDE.match(line)
        if match:
            yield number, match.group(1), match.group(2)


def library_sources(root: Path, target: str) -> list[Path]:
    """The sources listed in `add_library(<target> ...)` of the top CMakeLists.txt."""
    text = (root / "CMakeLists.txt").read_text()
    match = re.search(r"add_library\(\s*" + re.escape(target) + r"\s+([^)]*)\)", text)
    if match is None:
        sys.exit(f"check_layering: no add_library({target} ...) in CMakeLists.txt")
    return [root / name for name in match.group(1).split() if name.endswith(".cc")]


def resolve(root: Path, including: Path, name: str) -> Path | None:
    """Where a quoted include points in this tree (the includer's folder, src/, include/)."""
    for folder in (including.parent, root / "src", root / "include"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def check(root: Path) -> list[str]:
    problems = []

    def where(path: Path, line: int) -> str:
        return f"{path.relative_to(root)}:{line}"

    public = sorted((root / "include" / "shmarrow").rglob("*.h"))
    for header in public:
        for line, delimiter, name in includes(header):
            if delimiter == '"' and not name.startswith("shmarrow/"):
                problems.append(f"{where(header, line)}: public header includes \"{name}\" "
                                "(not a public header)")

    # The core: the library's sources and what they include, transitively.
    seen: set[Path] = set()
    pending = library_sources(root, "shmarrow")
    while pending:
        path = pending.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for line, delimiter, name in includes(path):
            if FLIGHT_OR_GRPC.match(name):
                problems.append(f"{where(path, line)}: core file includes <{name}> (Flight and "
                                "gRPC belong to shmarrow_flight only)")
            if delimiter == '"':
                target = resolve(root, path, name)
                if target is not None:
                    pending.append(target)

    for path in sorted(public + sorted((root / "src").glob("*.h")) +
                       sorted((root / "src").glob("*.cc"))):
        if path.relative_to(root).as_posix() == VOCABULARY_HEADER:
            continue
        for number, text in enumerate(path.read_text().splitlines(), 1):
            match = VOCABULARY.match(text)
            if match:
                problems.append(f"{where(path, number)}: '{match.group(1).rstrip(' {')}' belongs "
                                f"in {VOCABULARY_HEADER}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    root = parser.parse_args().root.resolve()
    problems = check(root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"check_layering: {len(problems)} violation(s)", file=sys.stderr)
        return 1
    print("check_layering: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
