"""The Python examples (examples/python/) run as a user would run them, and type-check.

Each consumer example runs against examples/python/producer.py in another process; every example
must exit 0 and print what its docstring promises. ``mypy --strict`` checks all of them against
the package as a user's project would (pyarrow itself ships no type information, so only its
imports are let through).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REPO, TIMEOUT_S, child_env

pytest.importorskip("shmarrow._native_api", reason="the compiled extension is not built")

EXAMPLES = REPO / "examples" / "python"


def _address() -> str:
    return f"@py-example-{uuid.uuid4().hex}"


def _start(name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(EXAMPLES / name), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())


def _finish(process: subprocess.Popen[str]) -> str:
    try:
        out, err = process.communicate(timeout=TIMEOUT_S * 2)
    finally:
        process.kill()
    assert process.returncode == 0, err
    return out


def _with_producer(consumer: str, consumers: int = 1) -> tuple[str, str]:
    """Runs producer.py and ``consumer`` against it: (producer's output, consumer's)."""
    address = _address()
    producer = _start("producer.py", "--socket", address, "--consumers", str(consumers))
    reader = _start(consumer, "--socket", address)
    return _finish(producer), _finish(reader)


def test_producer_and_consumer():
    produced, consumed = _with_producer("consumer.py")
    assert produced == "published 3 batches, copied 0 bytes\n"
    assert consumed.startswith("ring stream: city: string\n")
    assert consumed.count("batch of 4 rows; hot: Cairo\n") == 3
    assert consumed.endswith("\n12 rows\n")


def test_polars_and_duckdb():
    produced, consumed = _with_producer("polars_duckdb.py", consumers=2)
    assert produced == "published 3 batches, copied 0 bytes\n"
    assert consumed == "polars: ('Cairo', 33.0)\nduckdb: ('Cairo', 32.0)\n"


def test_asyncio_consumer():
    produced, consumed = _with_producer("asyncio_consumer.py")
    assert produced == "published 3 batches, copied 0 bytes\n"
    assert consumed.count("batch of 4 rows\n") == 3
    assert consumed.splitlines()[-1].startswith("12 rows; the event loop ran ")


def test_request_response():
    out = _finish(_start("request_response.py", "--socket", _address()))
    assert out == "squares: [0, 1, 4, 9, 16]\ncopied 0 bytes\n"


def test_examples_pass_mypy_strict(tmp_path: Path):
    pytest.importorskip("mypy")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\ncache_dir = " + str(tmp_path / "cache") +
                      "\n[mypy-pyarrow.*]\nignore_missing_imports = True\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config),
                             str(EXAMPLES)], capture_output=True, text=True, env=child_env(),
                            timeout=TIMEOUT_S * 6)
    assert result.returncode == 0, result.stdout + result.stderr
