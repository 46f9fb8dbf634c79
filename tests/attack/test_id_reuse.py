"""An id removed and reused by another object in the middle of a C call.

The C core sometimes needs two syscalls on one id: the size of a segment and
its attachment, the member count of a semaphore set and its GETALL/SETALL.
If another process removes the object between the two and the id is reused
by a different one, the second syscall acts on an object of another size.
Nothing may then read or write out of bounds.

The race is made deterministic with an LD_PRELOAD shim: when shmat() or
semctl(GETALL/SETALL) is called on the id named in an environment variable,
the shim first removes that object and creates another, of another size,
with the same id (kernel.shm_next_id / sem_next_id, in a throwaway IPC
namespace), then makes the real call.  The namespace, and whatever is in it,
vanishes with the child.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers_faults import WAIT, child_code, run_json_child

import shmsem
from shmsem import _core

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>

union semun { int val; struct semid_ds *buf; unsigned short *array; };

static void set_next_id(const char *name, int id)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/sys/kernel/%s", name);
    FILE *f = fopen(path, "w");
    if (f != NULL) {
        fprintf(f, "%d\n", id);
        fclose(f);
    }
}

/* When asked (env), the id is reused by another object before the call. */
static int take(const char *var, int id, long *size)
{
    const char *want = getenv(var);
    const char *sz = getenv("SHIM_REUSE_SIZE");
    if (want == NULL || sz == NULL || atoi(want) != id)
        return 0;
    *size = atol(sz);
    unsetenv(var); /* once */
    return 1;
}

void *shmat(int id, const void *addr, int flags)
{
    void *(*real)(int, const void *, int) = dlsym(RTLD_NEXT, "shmat");
    long size;
    if (take("SHIM_REUSE_SHMID", id, &size)) {
        shmctl(id, IPC_RMID, NULL);
        set_next_id("shm_next_id", id);
        int nid = shmget(IPC_PRIVATE, (size_t)size, IPC_CREAT | 0600);
        fprintf(stderr, "shim: shm id %d reused as %d (%ld bytes)\n", id, nid, size);
    }
    return real(id, addr, flags);
}

int semctl(int id, int num, int cmd, ...)
{
    int (*real)(int, int, int, ...) = dlsym(RTLD_NEXT, "semctl");
    union semun arg = {0};
    va_list ap;
    va_start(ap, cmd);
    if (cmd == GETALL || cmd == SETALL || cmd == SETVAL || cmd == IPC_STAT || cmd == IPC_SET)
        arg = va_arg(ap, union semun);
    va_end(ap);
    long size;
    if ((cmd == GETALL || cmd == SETALL) && take("SHIM_REUSE_SEMID", id, &size)) {
        real(id, 0, IPC_RMID);
        set_next_id("sem_next_id", id);
        int nid = semget(IPC_PRIVATE, (int)size, IPC_CREAT | 0600);
        fprintf(stderr, "shim: sem id %d reused as %d (%ld members)\n", id, nid, size);
    }
    return real(id, num, cmd, arg);
}
"""

BIG_SET = 70000


# ---------------------------------------------------------------------------
# Inside the namespace (LD_PRELOAD=shim)


def report(label: str, fn: Callable[[], Any]) -> None:
    print(json.dumps({"start": label}), flush=True)
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - reported to the test
        out = {"label": label, "cls": type(e).__name__, "msg": str(e),
               "syscall": getattr(e, "syscall", None)}
    else:
        out = {"label": label, "cls": None, "result": result}
    print(json.dumps(out), flush=True)


def ns_segment(big: int, small: int) -> None:
    """The id is reused by a segment of another size just before shmat."""
    shmid = _core.shmget(None, big, _core.IPC_CREAT | 0o600)
    os.environ["SHIM_REUSE_SHMID"] = str(shmid)
    os.environ["SHIM_REUSE_SIZE"] = str(small)
    try:
        seg = _core.Segment(shmid)
    finally:
        del os.environ["SHIM_REUSE_SHMID"], os.environ["SHIM_REUSE_SIZE"]
    now = _core.shm_stat(shmid)[6]
    print(json.dumps({"label": "sizes", "seg": seg.size, "now": now,
                      "view": memoryview(seg).nbytes}), flush=True)
    # The last byte the segment claims: beyond the mapping if the size were stale.
    report("read the last byte", lambda: seg.read_at(seg.size - 1, 1).hex())
    report("write the last byte", lambda: seg.write_at(seg.size - 1, b"\x01"))
    seg.detach()
    _core.shm_rmid(shmid)
    print(json.dumps({"finished": True}), flush=True)


def ns_semaphores(which: str) -> None:
    """The id is reused by a larger set just before GETALL or SETALL."""
    sem = pathlib.Path("/proc/sys/kernel/sem")
    _, semmns, semopm, semmni = sem.read_text().split()
    sem.write_text(f"{BIG_SET} {max(int(semmns), 4 * BIG_SET)} {semopm} {semmni}")
    semid = _core.semget(None, 4, _core.IPC_CREAT | 0o600)
    os.environ["SHIM_REUSE_SEMID"] = str(semid)
    os.environ["SHIM_REUSE_SIZE"] = str(BIG_SET)
    try:
        if which == "getall":
            report("GETALL", lambda: len(_core.sem_getall(semid)))
        else:
            report("SETALL", lambda: _core.sem_setall(semid, [1, 2, 3, 4]))
    finally:
        os.environ.pop("SHIM_REUSE_SEMID", None)
        del os.environ["SHIM_REUSE_SIZE"]
    nsems = _core.sem_stat(semid)[6]
    values = _core.sem_getall(semid)
    print(json.dumps({"label": "after", "nsems": nsems, "nonzero": sum(1 for v in values if v)}),
          flush=True)
    _core.semctl(semid, 0, _core.IPC_RMID)
    print(json.dumps({"finished": True}), flush=True)


# ---------------------------------------------------------------------------
# The tests


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip("reusing an id on purpose needs root: unshare --ipc and kernel.*_next_id")
    if not (Path("/proc/sys/kernel/shm_next_id").exists()
            and Path("/proc/sys/kernel/sem_next_id").exists()):
        pytest.skip("this kernel has no kernel.shm_next_id (CONFIG_CHECKPOINT_RESTORE)")
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        pytest.skip("no C compiler for the LD_PRELOAD shim")
    d = tmp_path_factory.mktemp("shim")
    (d / "shim.c").write_text(SHIM_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(d / "shim.so"),
                    str(d / "shim.c"), "-ldl"], check=True, timeout=120)
    return d / "shim.so"


def run_in_namespace(shim: Path, function: str, *args: Any) -> dict[str, dict[str, Any]]:
    code = child_code("test_id_reuse", function, *args)
    env = dict(os.environ)
    # After a preloaded sanitizer runtime, which must stay first.
    env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), str(shim)]))
    stderr, steps = run_json_child([shutil.which("unshare") or "unshare", "--ipc",
                                    sys.executable, "-X", "faulthandler", "-c", code], env)
    assert "reused as" in stderr, f"the shim did not reuse the id: {stderr}"
    return steps


@pytest.mark.parametrize("big, small", [(1 << 20, 4096), (4096, 1 << 20)])
def test_segment_size_is_that_of_the_segment_attached(shim: Path, big: int, small: int) -> None:
    """Segment(shmid) attaches, then reads the size: an attached segment's
    id cannot be reused, so the size is that of the mapping."""
    res = run_in_namespace(shim, "ns_segment", big, small)
    sizes = res["sizes"]
    assert sizes["now"] == small
    assert sizes["seg"] == sizes["view"] == small
    assert res["read the last byte"]["cls"] is None
    assert res["write the last byte"] == {"label": "write the last byte", "cls": None,
                                          "result": 1}


@pytest.mark.parametrize("which", ["getall", "setall"])
def test_set_reused_by_a_larger_one_is_reported_removed(shim: Path, which: str) -> None:
    """GETALL/SETALL sized for 4 members meet a set of 70000: the kernel
    stops at the guard page, the call raises RemovedError, and the new set
    is untouched."""
    res = run_in_namespace(shim, "ns_semaphores", which)
    r = res[which.upper()]
    assert r["cls"] == "RemovedError", r
    assert "reused" in r["msg"]
    assert res["after"] == {"label": "after", "nsems": BIG_SET, "nonzero": 0}


# ---------------------------------------------------------------------------
# Without the shim


def test_attach_reports_the_segment_size() -> None:
    for size in (1, 4095, 4097, 12345):
        shmid = _core.shmget(None, size, _core.IPC_CREAT | 0o600)
        try:
            seg = _core.Segment(shmid)
            assert seg.size == size and memoryview(seg).nbytes == size
            seg.detach()
            ro = _core.Segment(shmid, True)
            assert ro.size == size and ro.readonly
            ro.detach()
        finally:
            _core.shm_rmid(shmid)


def test_attach_of_a_removed_id_raises_removed_error_naming_shmat() -> None:
    shmid = _core.shmget(None, 4096, _core.IPC_CREAT | 0o600)
    _core.shm_rmid(shmid)
    with pytest.raises(shmsem.RemovedError) as info:
        _core.Segment(shmid)
    assert info.value.syscall == "shmat" and info.value.id == shmid


def test_attach_of_a_removed_but_attached_segment_works() -> None:
    """Linux keeps a removed segment while it is attached, and its id stays
    reserved: it can still be attached by id, and reports its size."""
    shmid = _core.shmget(None, 5000, _core.IPC_CREAT | 0o600)
    first = _core.Segment(shmid)
    _core.shm_rmid(shmid)
    try:
        second = _core.Segment(shmid)
        assert second.size == 5000
        second.detach()
    finally:
        first.detach()
