#!/usr/bin/env python3
"""Writes docs/api/python.md, the Python API reference, from the package's docstrings.

    .venv/bin/python scripts/gen_python_api_docs.py           # rewrite docs/api/python.md
    .venv/bin/python scripts/gen_python_api_docs.py --check   # exit 1 if it is out of date

Documents what ``shmarrow`` exports (``__all__``) and ``shmarrow.recv.open_stream``: each class
with its constructor's signature, its public methods and properties, in source order. The
tests (tests/python/test_api_docs.py) run ``--check``, so the committed file cannot go stale.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "api" / "python.md"
sys.path.insert(0, str(REPO / "python"))

import shmarrow  # noqa: E402
import shmarrow.recv  # noqa: E402

HEADER = """\
# Python API reference

Generated from the docstrings by `scripts/gen_python_api_docs.py`; do not edit by hand (the
tests fail when this file differs from what the script writes). Timeouts are seconds (float;
None: forever).
"""


def _doc(obj: Any) -> str:
    """The docstring in Markdown: reST's ``literals`` and :role:`names` as code, and
    :param/:raises fields as list items."""
    text = inspect.getdoc(obj) or ""
    text = re.sub(r":(?:class|meth|attr|func):`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    text = re.sub(r"^:param ([^:]+): ", r"- **\1**: ", text, flags=re.MULTILINE)
    text = re.sub(r"^:raises ([^:]+): ", r"- raises **\1**: ", text, flags=re.MULTILINE)
    return text


def _signature(name: str, function: Callable[..., Any]) -> str:
    try:
        # eval_str: the annotations as types, not the strings `from __future__` leaves.
        signature = str(inspect.signature(function, eval_str=True))
    except (TypeError, ValueError):  # a compiled function without a signature
        return f"{name}(...)"
    return f"{name}{signature.replace('pyarrow.lib.', 'pyarrow.')}"


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined by ``cls`` itself, in source order (dunder
    protocols included when documented)."""
    members = []
    for name, member in vars(cls).items():
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            continue
        if name.startswith("__") and (not _doc(member) or name in (
                "__init__", "__repr__", "__enter__", "__dict__", "__weakref__")):
            continue
        if isinstance(member, (property, staticmethod, classmethod)) or inspect.isfunction(member):
            members.append((name, member))
        elif type(member).__name__ in ("nb_method", "nb_func", "getset_descriptor"):
            members.append((name, member))
    return members


def _class_section(cls: type) -> list[str]:
    kind = "exception" if issubclass(cls, BaseException) else "class"
    lines = [f"## {kind} `shmarrow.{cls.__name__}`", ""]
    if issubclass(cls, BaseException):
        bases = ", ".join(f"`{base.__name__}`" for base in cls.__bases__)
        lines += [f"Subclass of {bases}.", ""]
    elif "__init__" in vars(cls) and inspect.isfunction(vars(cls)["__init__"]):
        signature = _signature(cls.__name__, cls).replace("(self, ", "(")
        lines += ["```python", signature, "```", ""]
    if _doc(cls):
        lines += [_doc(cls), ""]
    if issubclass(cls, BaseException):
        return lines
    for name, member in _members(cls):
        if isinstance(member, property) or type(member).__name__ == "getset_descriptor":
            lines += [f"### property `{cls.__name__}.{name}`", ""]
            getter = member.fget if isinstance(member, property) else None
            if inspect.isfunction(getter):
                annotation = inspect.signature(getter, eval_str=True).return_annotation
                if annotation is not inspect.Signature.empty:
                    text = inspect.formatannotation(annotation).replace("pyarrow.lib.", "pyarrow.")
                    lines += [f"Type: `{text}`", ""]
        else:
            function = member.__func__ if isinstance(member, (staticmethod, classmethod)) \
                else member
            prefix = "async " if inspect.iscoroutinefunction(function) else ""
            lines += [f"### `{prefix}{cls.__name__}.{_signature(name, function)}`"
                      .replace("(self, ", "(").replace("(self)", "()"), ""]
        if _doc(member):
            lines += [_doc(member), ""]
    return lines


def _function_section(qualified: str, function: Callable[..., Any]) -> list[str]:
    name = qualified.rsplit(".", 1)[1]
    return [f"## function `{qualified}`", "", "```python", _signature(name, function), "```", "",
            _doc(function), ""]


def render() -> str:
    lines = [HEADER]
    names = [name for name in shmarrow.__all__ if name != "__version__"]
    classes = [getattr(shmarrow, name) for name in names]
    # The API first, then the exceptions (base class first).
    for cls in sorted(classes, key=lambda c: (issubclass(c, BaseException),
                                              c is not shmarrow.ShmarrowError, names.index(
                                                  c.__name__))):
        lines += _class_section(cls)
    lines += _function_section("shmarrow.recv.open_stream", shmarrow.recv.open_stream)
    lines += ["## `python -m shmarrow.recv`", "", "```", _recv_usage().rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _recv_usage() -> str:
    import contextlib
    import io

    out = io.StringIO()
    # argparse wraps to the terminal's width ($COLUMNS first): the same text wherever it runs.
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(out):
            shmarrow.recv.parse_args(["--help"])
    except SystemExit:
        pass
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed file instead of writing it")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run scripts/gen_python_api_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
