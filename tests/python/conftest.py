"""Fixtures for the Python tests: where things are, short socket paths, and producer processes."""

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PYTHON_SRC = REPO / "python"
# The tests exercise this checkout's package whether or not it is installed into the venv.
if str(PYTHON_SRC) not in sys.path:
    sys.path.insert(0, str(PYTHON_SRC))

TIMEOUT_S = 20  # no single subprocess may take longer: a hang fails instead of blocking the suite
_SOCKET_PATH_MAX = 99  # well inside sockaddr_un.sun_path's 108 bytes


def build_dir() -> Path:
    """The C++ build directory: $SHMARROW_BUILD, or build/ in the repository."""
    return Path(os.environ.get("SHMARROW_BUILD", REPO / "build"))


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTHON_SRC), env.get("PYTHONPATH")]))
    return env


def run_recv(*args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """python -m shmarrow.recv with ``args``."""
    return subprocess.run([sys.executable, "-m", "shmarrow.recv", *args], capture_output=True,
                          text=True, timeout=timeout, env=child_env())


def run_script(name: str, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """One of the scripts next to this file."""
    return subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True,
                          text=True, timeout=timeout, env=child_env())


@pytest.fixture
def shmarrow_bin() -> Path:
    """The C++ tool; tests that need it are skipped until it is built."""
    path = build_dir() / "shmarrow"
    if not os.access(path, os.X_OK):
        pytest.skip(f"C++ tool {path} is not built (build it, or point SHMARROW_BUILD at a build)")
    return path


@pytest.fixture
def sock_dir(tmp_path):
    """A directory for socket files whose paths fit in sockaddr_un."""
    if len(str(tmp_path / "producer.sock")) <= _SOCKET_PATH_MAX:
        yield tmp_path
        return
    short = tempfile.mkdtemp(prefix="sa", dir="/tmp")
    yield Path(short)
    shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def sock_path(sock_dir) -> str:
    return str(sock_dir / "producer.sock")


class Processes:
    """Starts background processes and makes sure none outlives its test."""

    def __init__(self):
        self._procs = []

    def start(self, argv: list) -> subprocess.Popen:
        proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=child_env())
        self._procs.append(proc)
        return proc

    def sender(self, socket_path: str, *args: str) -> tuple:
        """Starts seedlike_sender.py and waits until it listens; returns (process, what it
        printed: {"socket", "inode", "bytes"})."""
        proc = self.start([sys.executable, HERE / "seedlike_sender.py", "--socket", socket_path,
                           "--accept-timeout", str(TIMEOUT_S), *args])
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            pytest.fail(f"seedlike_sender.py did not start: {proc.communicate()[1]}")
        return proc, json.loads(line)

    def finish(self, proc: subprocess.Popen) -> tuple:
        """Waits for ``proc``; returns (returncode, stdout, stderr)."""
        out, err = proc.communicate(timeout=TIMEOUT_S)
        return proc.returncode, out, err

    def kill_all(self):
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def procs():
    processes = Processes()
    yield processes
    processes.kill_all()


class ThreadedProducer:
    """seedlike_sender's Producer serving one client from a thread of the test process: the same
    code as the script, without the second or so of starting it."""

    def __init__(self, socket_path: str, *args: str):
        import seedlike_sender  # next to this file, like the tests

        argv = ["--socket", socket_path, "--accept-timeout", str(TIMEOUT_S), *args]
        self.producer = seedlike_sender.Producer(seedlike_sender.parse_args(argv))
        self.info = self.producer.info
        self._error = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            self.producer.serve()
        except BaseException as e:  # handed to the test by finish()
            self._error = e

    def finish(self):
        """Waits for the client to have been served; raises what serving raised."""
        self._thread.join(TIMEOUT_S)
        assert not self._thread.is_alive(), "producer thread still waiting for a client"
        if self._error is not None:
            raise self._error

    def stop(self):
        """Ends a producer its test never connected to, by being its client."""
        if self._thread.is_alive():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(self.producer.listener.getsockname())
            self._thread.join(TIMEOUT_S)


@pytest.fixture
def serve():
    """serve(socket_path, *seedlike_sender args) -> ThreadedProducer, already listening."""
    started = []

    def start(socket_path: str, *args: str) -> ThreadedProducer:
        started.append(ThreadedProducer(socket_path, *args))
        return started[-1]

    yield start
    for producer in started:
        producer.stop()
