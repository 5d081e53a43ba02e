"""Apache Arrow's cross-implementation corpus (../shared/arrow-testing) against shmarrow.

* Inputs that once crashed Arrow readers, and a file from a future format version: `shmarrow
  inspect` reads or rejects each one with a one-line error and exit code 1, never crashing or
  hanging.
* Every integration `.stream` and `.arrow_file`: `shmarrow inspect --json` reports what pyarrow
  reads (schema, counts, null counts, checksums computed independently in Python), and the file
  republished through shared memory (`shmarrow send --from`) arrives equal to pyarrow's reading.
"""

import json
import mmap
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from shmarrow.summary import StreamSummary

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "arrow-testing"
BUILD = Path(os.environ.get("SHMARROW_BUILD", REPO / "build"))
CLI = BUILD / "shmarrow"

pytestmark = [
    pytest.mark.skipif(not CORPUS.is_dir(),
                       reason="../shared/arrow-testing not present (it is in CI)"),
    pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built"),
]


def _files(*folders, suffixes=None):
    if not CORPUS.is_dir():
        return []
    found = []
    for folder in folders:
        for path in sorted((CORPUS / folder).iterdir()):
            if path.is_file() and (suffixes is None or path.suffix in suffixes):
                found.append(path)
    return found


def _integration_files():
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in (CORPUS / "arrow-ipc-stream" / "integration").rglob("*")
                  if p.suffix in (".stream", ".arrow_file"))


def _ids(paths):
    return [str(p.relative_to(CORPUS)) for p in paths]


HOSTILE = _files("arrow-ipc-stream", "arrow-ipc-file", "arrow-ipc-tensor-stream",
                 "forward-compatibility")
INTEGRATION = _integration_files()


def _read_with_pyarrow(path):
    """pyarrow's reading of `path`; skips the test for files pyarrow cannot handle itself."""
    try:
        source = pa.memory_map(str(path))
        if path.suffix == ".arrow_file":
            reader = pa.ipc.open_file(source)
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        else:
            reader = pa.ipc.open_stream(source)
            batches = list(reader)
        for batch in batches:
            batch.columns  # pyarrow lacks Python classes for a few types (month intervals)
    except (pa.ArrowException, KeyError) as error:
        pytest.skip(f"pyarrow itself cannot read it: {error!r}")
    return reader.schema, batches


@pytest.mark.parametrize("path", HOSTILE, ids=_ids(HOSTILE))
def test_inspect_reads_or_rejects_cleanly(path):
    run = subprocess.run([CLI, "inspect", path], capture_output=True, text=True, timeout=60)
    assert run.returncode in (0, 1), f"crashed: exit {run.returncode}\n{run.stderr}"
    if run.returncode == 1:
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("shmarrow inspect: "), run.stderr
        assert path.name in lines[0]


def test_future_metadata_version_is_rejected():
    path = CORPUS / "forward-compatibility" / "schema_v6.arrow"
    run = subprocess.run([CLI, "inspect", path], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "MetadataVersion" in run.stderr


@pytest.mark.parametrize("path", INTEGRATION, ids=_ids(INTEGRATION))
def test_inspect_matches_pyarrow(path):
    schema, batches = _read_with_pyarrow(path)
    expected = StreamSummary(schema)
    for batch in batches:
        expected.add(batch)
    run = subprocess.run([CLI, "inspect", "--json", path], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    want = expected.to_dict()
    for key in ("schema", "batches", "rows", "columns"):
        assert report[key] == want[key], key


def _receive_stream(socket_path):
    """Receives the fd, checks it is sealed and maps it: the batches and the mapping's range."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(socket_path)
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    assert len(fds) == 1
    with os.fdopen(fds[0], "rb", closefd=True) as memfd:
        size = os.fstat(memfd.fileno()).st_size
        mapping = mmap.mmap(memfd.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    buffer = pa.py_buffer(mapping)
    reader = pa.ipc.open_stream(buffer)
    return reader.schema, list(reader), (buffer.address, buffer.address + size)


def _buffers(array):
    """Buffers holding bytes (a zero-length buffer has nothing that could have been copied)."""
    yield from (b for b in array.buffers() if b is not None and b.size > 0)
    if isinstance(array, pa.DictionaryArray):
        yield from _buffers(array.dictionary)


@pytest.mark.parametrize("path", INTEGRATION, ids=_ids(INTEGRATION))
def test_republished_through_shared_memory_equals_pyarrow(path):
    schema, batches = _read_with_pyarrow(path)
    with tempfile.TemporaryDirectory(prefix="sa") as folder:
        socket_path = os.path.join(folder, "s")
        producer = subprocess.Popen([CLI, "send", "--from", path, "--socket", socket_path,
                                     "--json", "--accept-timeout-ms", "30000"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            sent = json.loads(producer.stdout.readline())
            got_schema, got_batches, (low, high) = _receive_stream(socket_path)
        finally:
            _, err = producer.communicate(timeout=30)
        assert producer.returncode == 0, err
    assert got_schema.equals(schema, check_metadata=True)
    assert len(got_batches) == len(batches)
    for got, want in zip(got_batches, batches):
        got.validate(full=True)
        assert got.equals(want)
        for column in got.columns:
            for buffer in _buffers(column):
                assert low <= buffer.address and buffer.address + buffer.size <= high
    compressed = "compression" in str(path)
    if not compressed and not any(pa.types.is_dictionary(f.type) for f in schema):
        assert sent["placement"]["bytes_copied"] == 0
