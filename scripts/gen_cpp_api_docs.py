#!/usr/bin/env python3
"""Writes docs/api/cpp.md, the C++ API reference, from the public headers' comments.

Every public declaration of include/shmarrow/**/*.h is listed with the `///` comment above it (or the
`//` comment after it on the same line); a header's opening `//` comment introduces its section.
Private members, destructors and deleted functions are left out. Pure Python, no dependencies.

    python3 scripts/gen_cpp_api_docs.py           # (re)write docs/api/cpp.md
    python3 scripts/gen_cpp_api_docs.py --check   # exit 1 if docs/api/cpp.md is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADERS = REPO / "include" / "shmarrow"
OUTPUT = REPO / "docs" / "api" / "cpp.md"

TYPE_KEYWORDS = ("enum class", "enum", "struct", "class")
# Words that say how a function is implemented, not how it is called.
NOISE = re.compile(r"\[\[nodiscard\]\]\s*|\bvirtual\s+|\s+override\b|\s+final\b")
PURE = re.compile(r"\s*=\s*0$")
# A statement ending like this before a `{` is a function's head, and the braces its body.
FUNCTION_HEAD = re.compile(r"\)\s*(?:const|noexcept|override|final|\s)*$")


@dataclass
class Entity:
    kind: str             # "enum class", "struct", "class", "function", "member", "enumerator", ...
    name: str             # the type's name, or the declaration as written (normalised)
    doc: list[str]
    bases: str = ""
    declarator: str = ""  # for a nested type declared with a member: `struct Remote {...} remote;`
    children: list[Entity] = field(default_factory=list)


def normalise(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", text))


def strip_initializer_list(signature: str) -> str:
    """`X(int fd) noexcept : fd_(fd)` -> `X(int fd) noexcept`."""
    start = signature.find("(")
    if start < 0:
        return signature
    depth = 0
    for i in range(start, len(signature)):
        depth += {"(": 1, ")": -1}.get(signature[i], 0)
        if depth == 0:
            rest = signature[i + 1:]
            colon = re.search(r"(?<!:):(?!:)", rest)
            return signature[:i + 1] + (rest[:colon.start()] if colon else rest)
    return signature


class HeaderParser:
    """A small scanner for the declarations these headers use (not a C++ parser)."""

    def __init__(self, text: str):
        self.text = text
        self.intro: list[str] = []
        self.root = Entity("namespace", "", [])

    def parse(self) -> HeaderParser:
        lines = self.text.splitlines()
        # The opening comment, up to the first line that is not one.
        for line in lines:
            if not line.startswith("//"):
                break
            self.intro.append(line[2:].strip())
        body = "\n".join("" if line.lstrip().startswith("#") else line for line in lines)
        self._scan(body)
        return self

    def _scan(self, text: str) -> None:
        # Scopes: (entity, access, is_enum); namespaces are transparent.
        scopes: list[tuple[Entity, str, bool]] = [(self.root, "public", False)]
        statement = ""
        doc: list[str] = []
        last: Entity | None = None   # the declaration that ended on this line (trailing comments)
        last_line = -1
        closing: Entity | None = None  # a nested type whose declarator follows its `}`
        line_no = 0
        i = 0
        while i < len(text):
            c = text[i]
            if text.startswith("//", i):
                end = text.find("\n", i)
                end = len(text) if end < 0 else end
                comment = text[i:end]
                if comment.startswith("///"):
                    doc.append(comment[3:].strip())
                elif last is not None and last_line == line_no and not statement.strip():
                    last.doc.append(comment[2:].strip())
                i = end
                continue
            if c in "\"'":
                # A literal, copied whole (a "//" inside it is not a comment).
                j = i + 1
                while j < len(text) and text[j] != c:
                    j += 2 if text[j] == "\\" else 1
                statement += text[i:j + 1]
                i = j + 1
                continue
            if c == "\n":
                line_no += 1
            entity, access, is_enum = scopes[-1]
            in_parens = statement.count("(") > statement.count(")")
            if c == "{" and not in_parens:
                head = normalise(statement)
                kind = next((k for k in TYPE_KEYWORDS if head.startswith(k + " ")), None)
                if head.startswith("namespace") or head.startswith("extern"):
                    scopes.append((entity, access, is_enum))
                    statement, doc = "", []
                elif kind is not None:
                    name, _, bases = head[len(kind) + 1:].partition(":")
                    name = name.replace("final", "").strip()
                    child = Entity(kind, name, doc, bases=normalise(bases))
                    if access == "public":
                        entity.children.append(child)
                    default_access = "public" if kind != "class" else "private"
                    scopes.append((child, default_access, kind.startswith("enum")))
                    statement, doc = "", []
                else:
                    # A function body (skipped) or a brace initializer (kept).
                    depth, j = 0, i
                    while j < len(text):
                        depth += {"{": 1, "}": -1}.get(text[j], 0)
                        line_no += text[j] == "\n"
                        if depth == 0:
                            break
                        j += 1
                    if FUNCTION_HEAD.search(statement):
                        last = self._declare(entity, access, statement, doc)
                        last_line = line_no
                        statement, doc = "", []
                    else:
                        statement += text[i:j + 1]
                    i = j + 1
                    continue
                i += 1
                continue
            if c == "}" and not in_parens:
                if is_enum and statement.strip():
                    self._declare(entity, access, statement, doc, enumerator=True)
                scopes.pop()
                statement, doc = "", []
                closing = entity
                i += 1
                continue
            if c == ";" or (c == "," and is_enum):
                if closing is not None and statement.strip():
                    closing.declarator = normalise(statement)
                elif statement.strip():
                    last = self._declare(entity, access, statement, doc, enumerator=is_enum)
                    last_line = line_no
                closing = None
                statement, doc = "", []
                i += 1
                continue
            if c == ":" and not text.startswith("::", i) and (i == 0 or text[i - 1] != ":"):
                word = statement.strip()
                if word in ("public", "private", "protected"):
                    scopes[-1] = (entity, word, is_enum)
                    statement = ""
                    i += 1
                    continue
            statement += c
            i += 1

    @staticmethod
    def _declare(scope: Entity, access: str, statement: str, doc: list[str],
                 enumerator: bool = False) -> Entity | None:
        text = normalise(statement)
        if access != "public" or not text or text.startswith(("friend ", "using namespace")):
            return None
        if "= delete" in text or re.search(r"(^|\s)~\w+\(", text):
            return None
        if enumerator:
            kind = "enumerator"
        elif text.startswith("using "):
            kind = "alias"
        elif "(" in text and "=" not in text.split("(")[0].replace("operator=", ""):
            kind = "function"
            text = PURE.sub("", strip_initializer_list(text))
        else:
            kind = "member"
        text = NOISE.sub("", text).strip()
        entity = Entity(kind, text, doc)
        scope.children.append(entity)
        return entity


def anchor(title: str) -> str:
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def paragraph(doc: list[str]) -> str:
    """Comment lines as Markdown: lines joined, blank comment lines kept as paragraph breaks, lines
    indented further (formulas, lists) kept as they are."""
    out: list[str] = []
    for line in doc:
        if not line:
            out.append("")
        elif out and out[-1] and not line.startswith(("-", "e_i", "sum", " ")):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out).strip()


def render_type(entity: Entity, qualified: str, level: int, out: list[str],
                toc: list[tuple[int, str]]) -> None:
    title = f"{entity.kind} {qualified}"
    heading = f"{'#' * level} {entity.kind} `{qualified}`"
    toc.append((level, title))
    out.append(heading)
    out.append("")
    extras = []
    if entity.bases:
        extras.append(f"Derives from `{entity.bases}`.")
    if entity.declarator:
        extras.append(f"Declared as the member `{entity.declarator}`.")
    text = paragraph(entity.doc)
    if text or extras:
        out.append(" ".join(filter(None, [text, *extras])))
        out.append("")
    plain = [c for c in entity.children if c.kind in ("member", "function", "enumerator", "alias")]
    for child in plain:
        text = paragraph(child.doc)
        out.append(f"- `{child.name}`" + (f" — {text}" if text else ""))
    if plain:
        out.append("")
    for child in entity.children:
        if child.kind in TYPE_KEYWORDS:
            render_type(child, f"{qualified}::{child.name}", min(level + 1, 6), out, toc)


def render(headers: list[Path]) -> str:
    body: list[str] = []
    toc: list[tuple[int, str]] = []
    for header in headers:
        parsed = HeaderParser(header.read_text()).parse()
        include = header.relative_to(HEADERS.parent).as_posix()
        toc.append((2, include))
        body += [f"## {include}", "", f"`#include \"{include}\"`", ""]
        if parsed.intro:
            body += [paragraph(parsed.intro), ""]
        free = [c for c in parsed.root.children if c.kind not in TYPE_KEYWORDS]
        for entity in parsed.root.children:
            if entity.kind in TYPE_KEYWORDS:
                render_type(entity, f"shmarrow::{entity.name}", 3, body, toc)
        if free:
            title = f"Functions and constants ({include})"
            toc.append((3, title))
            body += [f"### {title}", ""]
            for entity in free:
                text = paragraph(entity.doc)
                body.append(f"- `{entity.name}`" + (f" — {text}" if text else ""))
            body.append("")
    head = [
        "<!-- Generated by scripts/gen_cpp_api_docs.py from include/shmarrow/*.h; edit the header",
        "     comments and run the script (tests/python/test_cpp_api_docs.py checks it is current). -->",
        "",
        "# shmarrow C++ API reference",
        "",
        "Everything is in namespace `shmarrow`; errors are `arrow::Status` / `arrow::Result`.",
        "Link `shmarrow::shmarrow` (CMake). Guides: README.md, docs/design.md, docs/protocol.md.",
        "",
    ]
    for level, title in toc:
        head.append(f"{'  ' * (level - 2)}- [{title}](#{anchor(title)})")
    return "\n".join(head + [""] + body).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if {OUTPUT.relative_to(REPO)} is out of date")
    args = parser.parse_args()
    text = render(sorted(HEADERS.rglob("*.h")))
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(REPO)} is out of date: run "
                  f"python3 scripts/gen_cpp_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
