"""Producer(pages=...): each page policy delivers correct data in both modes and reports the page
size it obtained; hugetlb without free reserved pages fails when the producer is created, naming
nr_hugepages; `shmarrow send --pages` and its --json."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from shmarrow import Consumer, Producer

REPO = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("SHMARROW_BUILD", REPO / "build")) / "shmarrow"
TIMEOUT_S = 20
HUGE = 2 << 20


def _address() -> str:
    return f"@shmarrow-pages-{uuid.uuid4().hex}"


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0])
    return 0


def _auto_page_size() -> int:
    """What pages="auto" gets here: huge pages unless shared-memory THP is never/deny."""
    path = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
    setting = path.read_text() if path.exists() else "[never]"
    return 4096 if "[never]" in setting or "[deny]" in setting else HUGE


def _hugetlb_unavailable() -> str | None:
    if not Path("/proc/sys/vm/nr_hugepages").exists():
        return "kernel without hugetlb"
    if int(Path("/proc/sys/vm/nr_overcommit_hugepages").read_text()) > 0:
        return "vm.nr_overcommit_hugepages > 0: the kernel may hand out surplus pages"
    return None


@pytest.mark.parametrize("mode", ["ring", "sealed"])
@pytest.mark.parametrize("pages", ["auto", "off"])
def test_policy_delivers_correct_data_and_reports_page_size(mode, pages):
    values = pa.array(range(1 << 20), pa.int64())  # 8 MiB: several huge pages
    batch = pa.record_batch([values], names=["x"])
    with Producer(_address(), batch.schema, mode=mode, pages=pages,
                  ring_size=32 << 20) as producer:
        assert producer.stats["page_size"] == (_auto_page_size() if pages == "auto" else 4096)
        with Consumer(producer.address, read_timeout=TIMEOUT_S) as consumer:
            producer.wait_for_consumers(1, timeout=TIMEOUT_S)
            producer.publish(batch)
            producer.end()
            received = list(consumer)
            assert len(received) == 1 and received[0].equals(batch)
            del received


def test_hugetlb_without_free_pages_fails_at_creation_naming_nr_hugepages():
    reason = _hugetlb_unavailable()
    if reason:
        pytest.skip(reason)
    # One page more than are free now.
    ring_size = (_meminfo("HugePages_Free") + 1) * HUGE
    with pytest.raises(Exception, match="nr_hugepages"):
        Producer(_address(), pa.schema([("x", pa.int64())]), pages="hugetlb",
                 ring_size=ring_size)


def test_unknown_policy_is_a_value_error():
    with pytest.raises(ValueError, match="pages must be"):
        Producer(_address(), pa.schema([("x", pa.int64())]), pages="huge")


@pytest.mark.skipif(not os.access(CLI, os.X_OK), reason=f"{CLI} not built")
def test_cli_send_pages_reports_page_size_in_json():
    sock = _address()
    send = subprocess.Popen([str(CLI), "send", "--mode", "ring", "--socket", sock, "--rows", "1000",
                             "--batches", "2", "--pages", "off", "--json", "--wait-consumers",
                             "1", "--drain-timeout-ms", "10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recv = subprocess.run([str(CLI), "recv", "--socket", sock, "--connect-timeout-ms", "10000",
                           "--json"],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    out, err = send.communicate(timeout=TIMEOUT_S)
    assert recv.returncode == 0 and send.returncode == 0, recv.stderr + err
    assert json.loads(out.splitlines()[-1])["producer"]["page_size"] == 4096
    assert json.loads(recv.stdout)["rows"] == 2000

    bad = subprocess.run([str(CLI), "send", "--mode", "ring", "--socket", _address(), "--pages",
                          "huge"], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert bad.returncode == 2 and "auto, hugetlb, off" in bad.stderr
