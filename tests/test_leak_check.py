"""The leak check in conftest.py: which new objects it takes for this test's.

In the machine's IPC namespace (any run that is not root) it must never
remove another program's objects, so an object counts as ours only when the
kernel names one of our processes for it.  Checked here on objects made by
this process, by a child that has exited, and by an unrelated process (a
daemonised grandchild, whose parent chain no longer leads here), whichever
namespace the suite runs in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import marked_as_ours
from ipc_helpers import remove_object

import shmsem
from shmsem import _core

MAKE = """
import shmsem
shm = shmsem.SharedMemory(None, 64)
sem = shmsem.Semaphore(None, 1)
q = shmsem.MessageQueue(None)
q.send(b"x", block=False)
silent = shmsem.MessageQueue(None)  # nobody ever sends to or receives from it
print(shm.id, sem.id, q.id, silent.id, flush=True)
shm.detach()
"""

# Fork, let the parent exit, and make the objects in the orphan: its parent
# is now init (or a subreaper), not one of ours.
DAEMON = """
import os, sys
if os.fork():
    os._exit(0)
os.setsid()
""" + MAKE + """
sys.stdin.readline()  # stay alive until the test has looked
"""


def objects(ids: str) -> tuple[set[tuple[str, int, int]], tuple[str, int, int]]:
    shm, sem, q, silent = (int(x) for x in ids.split())
    made = {("shm", 0, shm), ("sem", 0, sem), ("msg", 0, q)}
    return made, ("msg", 0, silent)


def remove(objs: set[tuple[str, int, int]]) -> None:
    for kind, _key, ident in objs:
        remove_object(kind, ident)


def test_objects_of_this_process_are_ours() -> None:
    shm = shmsem.SharedMemory(None, 64)
    sem = shmsem.Semaphore(None, 1)
    q = shmsem.MessageQueue(None)
    q.send(b"x", block=False)
    silent = shmsem.MessageQueue(None)
    made = {("shm", 0, shm.id), ("sem", 0, sem.id), ("msg", 0, q.id)}
    try:
        assert marked_as_ours(made | {("msg", 0, silent.id)}) == made
    finally:
        shm.close()
        for obj in (sem, q, silent):
            obj.remove()


def test_objects_of_an_exited_child_are_ours() -> None:
    r = subprocess.run([sys.executable, "-c", MAKE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    made, silent = objects(r.stdout)
    try:
        assert marked_as_ours(made | {silent}) == made
    finally:
        remove(made | {silent})


def test_objects_of_an_unrelated_process_are_not_ours() -> None:
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DAEMON)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    line = p.stdout.readline()
    assert line, "the daemonised grandchild printed nothing"
    made, silent = objects(line)
    try:
        assert p.wait(60) == 0
        assert marked_as_ours(made | {silent}) == set()
    finally:
        remove(made | {silent})
        p.stdin.close()  # the grandchild exits
        p.stdout.close()


def test_the_library_keeps_the_marks_this_relies_on() -> None:
    # shmsem's own sets are operated on at creation (the ready mark), so the
    # kernel records their creator's pid; a fresh queue has none.
    sem = shmsem.SemaphoreSet(None, 3)
    q = shmsem.MessageQueue(None)
    try:
        assert _core.semctl(sem.id, 0, _core.GETPID) == os.getpid()
        assert marked_as_ours({("sem", 0, sem.id)}) == {("sem", 0, sem.id)}
        assert marked_as_ours({("msg", 0, q.id)}) == set()
    finally:
        sem.remove()
        q.remove()
