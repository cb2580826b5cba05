"""`RunLock`: one process trains a run at a time; a dead holder never leaves it locked."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from larq_engrams import run_lock
from larq_engrams.run_lock import RunInProgressError, RunLock


def test_a_held_lock_is_refused_and_released_on_exit(tmp_path):
    run = str(tmp_path / "bnn" / "seed_0")
    with RunLock(run) as held:
        assert held.path == run + ".lock" and os.path.exists(held.path)
        with pytest.raises(RunInProgressError, match=rf"seed_0 is being trained by process {os.getpid()} "
                                                     rf"on {socket.gethostname()}"):
            with RunLock(run + os.sep):  # the same run, however it is spelled
                pass
    assert not os.path.exists(run + ".lock")
    with RunLock(run):  # free again
        pass
    assert RunLock(str(tmp_path / "seed_1.json")).path == str(tmp_path / "seed_1.lock")  # a record file's run


def test_an_error_inside_releases_the_lock(tmp_path):
    run = str(tmp_path / "seed_0")
    with pytest.raises(ZeroDivisionError):
        with RunLock(run):
            1 / 0
    with RunLock(run):
        pass


def test_a_killed_holder_leaves_the_run_free(tmp_path):
    """SIGKILL runs no cleanup: the lock file stays, but the kernel released its lock."""
    run = str(tmp_path / "seed_0")
    child = subprocess.Popen(
        [sys.executable, "-c", "import importlib.util, sys, time\n"
         f"spec = importlib.util.spec_from_file_location('run_lock', {run_lock.__file__!r})\n"
         "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
         f"module.RunLock({run!r}).__enter__(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunInProgressError, match=f"process {child.pid} "):
            with RunLock(run):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert os.path.exists(run + ".lock")  # left behind, unlocked
    with RunLock(run):
        pass
    assert not os.path.exists(run + ".lock")
