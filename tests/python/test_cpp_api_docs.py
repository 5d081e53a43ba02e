"""docs/api/cpp.md is generated from the public headers: it must match what the script writes now."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_cpp_api_docs.py"


def test_cpp_api_reference_is_current():
    check = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_reference_lists_every_public_type_with_its_comment():
    text = (REPO / "docs" / "api" / "cpp.md").read_text()
    for heading in ("struct `shmarrow::ConsumerOptions`", "class `shmarrow::Producer`",
                    "struct `shmarrow::ConsumerOptions::Remote`", "enum class `shmarrow::MemoryMode`"):
        assert heading in text
    # A member, its default and the comment above it in include/shmarrow/consumer.h.
    assert ("- `int connect_timeout_ms = 0` — Keep retrying to connect for this long "
            "(milliseconds)") in text
    # Private members stay out.
    assert "impl_" not in text and "buffer_;" not in text
