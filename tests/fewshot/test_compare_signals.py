"""SIGTERM to `bilevel compare` reaches its child trainers: none is left running, orphaned, and
the parent exits 130 ("stopped on request, checkpoints saved") once they stopped (before: the parent died at once, children kept training)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads child processes from /proc")


def spawned_children(parent: int) -> list[int]:
    """The multiprocessing children of ``parent`` that run a job (not its resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_reaches_every_child_and_the_parent_exits_130(tmp_path):
    cmd = [sys.executable, "-m", "bilevel.cli", "compare", "--benchmark", "sinusoid", "--methods", "maml,fomaml",
           "--iterations", "100000", "--meta-batch", "2", "--inner-steps", "1", "--val-every", "100000",
           "--val-tasks", "4", "--jobs", "2", "--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        children: list[int] = []
        while time.monotonic() < deadline and len(children) < 2:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
            children = spawned_children(proc.pid)
        assert len(children) == 2, "the two trainers did not start"
        time.sleep(1.0)  # let them get into training
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "SIGTERM: passed on to 2 running job(s)" in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(c) for c in children):
        time.sleep(0.1)
    assert not any(alive(c) for c in children), "a child trainer outlived its parent"
