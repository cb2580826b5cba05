"""`RunLock`: at most one process trains a given run.

The experiment scripts reuse finished runs and resume unfinished ones from per-task
checkpoints, so several processes may share one results folder (a grid split over
`--methods`, or over seeds). Two processes training the same run would write the same
checkpoint files, and one would read the other's half-written ones. A run's lock is
an exclusive `flock` on the file `<run>.lock` beside the run: the kernel releases it
when its process ends however it ends (an exception, Ctrl-C, SIGKILL), so a dead
process never leaves a run locked. The file is removed on release; a process that
opened it just before that checks, once locked, that the path still names the file it
locked, and retries otherwise.

POSIX only (`fcntl`); where it is missing (Windows) the lock does nothing.
"""
import json
import os
import socket

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

__all__ = ["RunInProgressError", "RunLock"]


class RunInProgressError(RuntimeError):
    """Another process holds the run's lock: it is training that run now."""


class RunLock:
    """Context manager holding the lock of the run stored at `run_path` (its folder or
    its record file; the lock is `run_path` less a `.json` suffix, plus `.lock`).

    Raises `RunInProgressError` on entry, without waiting, when another process (or
    another `RunLock` in this one) holds it.
    """

    def __init__(self, run_path):
        base = run_path.rstrip(os.sep)
        self.path = (base[: -len(".json")] if base.endswith(".json") else base) + ".lock"
        self._fd = None

    def __enter__(self):
        if fcntl is None:
            return self
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunInProgressError(f"{self.path[: -len('.lock')]} is being trained by {holder} "
                                         f"(lock {self.path})") from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # removed by the holder that just released it
                same_file = False
            if same_file:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc_info):
        if self._fd is not None:
            os.remove(self.path)  # before unlocking: no one can lock this file once it is gone
            os.close(self._fd)  # releases the lock
            self._fd = None
        return False


def _holder(fd):
    """'process <pid> on <host>' as the holder wrote it, or 'another process' while it has not yet."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {holder['pid']} on {holder['host']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "another process"
