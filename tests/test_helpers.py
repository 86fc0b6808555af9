"""The test suite's own helpers, where a fault would hide a failure or slow the rest of the suite."""

import subprocess
import sys
import time

import psutil

from tests.helpers import kill_tree


def _gone(pid: int) -> bool:
    try:  # a zombie is killed, only waiting for a parent to reap it
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_tree_reaches_a_grandchild_in_its_own_session():
    """What a timed-out `script` leaves: a child in a session of its own, which killing `script` alone misses."""
    own_session = f"{sys.executable} -c 'import os, time; os.setsid(); time.sleep(600)'"
    parent = subprocess.Popen(["sh", "-c", f"{own_session} & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    assert kill_tree(parent.pid) == 2
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)
