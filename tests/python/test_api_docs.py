"""docs/api/python.md is what scripts/gen_python_api_docs.py writes from the docstrings."""

import subprocess
import sys

import pytest

from conftest import REPO, TIMEOUT_S, child_env

pytest.importorskip("shmarrow._native_api", reason="the compiled extension is not built")


def test_the_python_api_reference_is_up_to_date():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_python_api_docs.py"),
                             "--check"], capture_output=True, text=True, env=child_env(),
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
