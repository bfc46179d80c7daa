"""The main job (``python -m fastpipe demo``) runs, says what it did, and
checks exactly-once delivery in both feeders."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(120)
def test_demo_runs_and_delivers_every_record_once():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "fastpipe", "demo", "--records", "20000",
                           "--batch", "100", "--epochs", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("every record exactly once: yes") == 2
    assert out.count("exactly once: yes") == 4
    assert "fastpipe fed the loop" in out and "M records/s" in out
