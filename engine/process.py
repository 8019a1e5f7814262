"""A child process in a process group of its own, its output in a log: the one supervisor the
engine, ``slmnet up`` and the test harness start, watch and stop their processes with.

A child is started in a new session, so a stop reaches everything it started (vLLM's
engine core and workers); ``stop`` sends SIGTERM to the group, waits ``grace`` seconds,
then SIGKILLs the group, and SIGKILLs it once more for anything left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when its parent dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    def __init__(
        self, cmd: Sequence[str], log_path: Optional[Path] = None, env: Optional[dict[str, str]] = None, append: bool = False, die_with_parent: bool = False
    ):
        self.log_path = log_path
        out = open(log_path, "ab" if append else "wb") if log_path else None
        try:
            self.process = subprocess.Popen(
                list(cmd),
                env=env,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        finally:
            if out is not None:
                out.close()
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> Optional[int]:
        """The exit code, or None while it runs."""
        return self.process.poll()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> Optional[int]:
        """The exit code, or None if it still runs after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path and self.log_path.exists() else ""

    def stop(self, grace: float = 60.0) -> int:
        """SIGTERM to its group, SIGKILL after ``grace`` seconds; returns the exit code."""
        stop_all([self], grace)
        return self.process.returncode


def stop_all(children: Iterable[Child], grace: float = 60.0) -> None:
    """Stop every child at once: SIGTERM to each group, then SIGKILL to each after one shared ``grace``."""
    children = list(children)
    for child in children:
        if child.returncode is None:
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        if child.wait(deadline - time.monotonic()) is None:
            child.signal_group(signal.SIGKILL)
            child.process.wait()
        child.signal_group(signal.SIGKILL)  # anything it left in its group
