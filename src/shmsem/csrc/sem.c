/* System V semaphores: the semop engine, the module functions over
 * semget/semop/semctl, and the SemBase type.
 *
 * Every wait first tries the operation with IPC_NOWAIT while holding the GIL
 * (the uncontended case then costs one syscall and no GIL round trip, as in
 * CPython's Modules/_multiprocessing/semaphore.c).  Only when that would block
 * does it release the GIL and wait, retrying EINTR with the time remaining on
 * CLOCK_MONOTONIC and running Python signal handlers in between (PEP 475).
 */
#include "shmsem.h"

#include <limits.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

union ss_semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

typedef struct {
    PyObject_HEAD
    ss_state *state;
    int semid;             /* -1 when unbound or closed */
    unsigned short num;
    int undo;
    int is_lock;           /* release() requires a prior acquire() by this process */
    int held;
    pid_t held_pid;
    int skip_probe;        /* acquires left that go straight to the blocking wait */
    int skip_len;          /* how many to skip after the next failed probe */
    PyObject *key;         /* for error messages only */
    PyObject *weakreflist;
} SemObject;


/* Apply ops atomically.  Returns 1 when applied, 0 when it would block
 * (nowait, a per-op IPC_NOWAIT, or the deadline passed), -1 with an
 * exception set.  With probe false, skip the IPC_NOWAIT attempt and wait at
 * once; *probe_failed tells whether an attempt was made and would block. */
static int
semop_ex(ss_state *st, int semid, struct sembuf *ops, struct sembuf *nowait_ops, size_t n,
         int blocking, int probe, const ss_deadline *dl, PyObject *key, int *probe_failed)
{
    int rc;
    *probe_failed = 0;
    if (probe || !blocking) {
        rc = semop(semid, nowait_ops, n);
        if (rc == 0)
            return 1;
        if (errno != EAGAIN && errno != EINTR)
            goto error;
        *probe_failed = 1;
        if (!blocking)
            return 0;
    }
    if (!dl->infinite && ss_remaining_ns(dl) == 0) {
        /* No time to wait, but the operation must still be tried once. */
        if (probe)
            return 0;
        *probe_failed = 1;
        rc = semop(semid, nowait_ops, n);
        if (rc == 0)
            return 1;
        if (errno != EAGAIN && errno != EINTR)
            goto error;
        return 0;
    }

    int async_err = 0, err;
    do {
        struct timespec ts;
        Py_BEGIN_ALLOW_THREADS
        if (dl->infinite) {
            rc = semop(semid, ops, n);
        } else if (ss_remaining(dl, &ts)) {
            rc = semtimedop(semid, ops, n, &ts);
        } else {
            rc = -1;
            errno = EAGAIN;
        }
        err = errno;
        Py_END_ALLOW_THREADS
        errno = err;
    } while (rc < 0 && err == EINTR && !(async_err = PyErr_CheckSignals()));
    if (rc == 0)
        return 1;
    if (async_err)
        return -1;
    if (err == EAGAIN)
        return 0;
error:
    ss_raise_errno(st, "semop", key, semid);
    return -1;
}

static int
semop_once(ss_state *st, int semid, struct sembuf *ops, struct sembuf *nowait_ops, size_t n,
           int blocking, const ss_deadline *dl, PyObject *key)
{
    int probe_failed;
    return semop_ex(st, semid, ops, nowait_ops, n, blocking, 1, dl, key, &probe_failed);
}

#define SKIP_PROBE_MIN 8
#define SKIP_PROBE_MAX 1024

/* ------------------------------------------------------------------------ */
/* Sem: one member of a set, with acquire/release in C so that the
 * uncontended pair costs two syscalls and almost nothing else. */

static PyObject *
sem_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ss_state *st = ss_state_from_type(type);
    if (st == NULL)
        return NULL;
    SemObject *self = (SemObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->state = st;
    self->semid = -1;
    self->key = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int
sem_traverse(SemObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->key);
    return 0;
}

static int
sem_clear(SemObject *self)
{
    Py_CLEAR(self->key);
    return 0;
}

static void
sem_dealloc(SemObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    sem_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
sem_check_bound(SemObject *self)
{
    if (self->semid < 0) {
        ss_raise_closed(self->state, "semaphore handle is closed");
        return -1;
    }
    return 0;
}

static PyObject *
sem_bind(SemObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"semid", "num", "key", "undo", "lock", NULL};
    int semid, num = 0, undo = 0, lock = 0;
    PyObject *key = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|iOpp:_bind", kwlist, &semid, &num, &key,
                                     &undo, &lock))
        return NULL;
    if (semid < 0 || num < 0 || num > 65535) {
        PyErr_SetString(PyExc_ValueError, "semid and num must be non-negative (num < 65536)");
        return NULL;
    }
    self->semid = semid;
    self->num = (unsigned short)num;
    self->undo = undo || lock;
    self->is_lock = lock;
    self->held = 0;
    Py_XSETREF(self->key, Py_NewRef(key));
    Py_RETURN_NONE;
}

static PyObject *
sem_unbind(SemObject *self, PyObject *unused)
{
    self->semid = -1;
    Py_RETURN_NONE;
}

/* Parse (blocking=True, timeout=None) from a vectorcall. */
static int
parse_acquire_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                   int *blocking, PyObject **timeout)
{
    PyObject *b = NULL, *t = NULL;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "acquire() takes at most 2 arguments");
        return -1;
    }
    if (nargs >= 1)
        b = args[0];
    if (nargs >= 2)
        t = args[1];
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject *value = args[nargs + i];
            if (PyUnicode_CompareWithASCIIString(name, "blocking") == 0 && b == NULL) {
                b = value;
            } else if (PyUnicode_CompareWithASCIIString(name, "timeout") == 0 && t == NULL) {
                t = value;
            } else {
                PyErr_Format(PyExc_TypeError, "acquire() got an unexpected or repeated "
                             "keyword argument '%U'", name);
                return -1;
            }
        }
    }
    *blocking = 1;
    if (b != NULL) {
        int v = PyObject_IsTrue(b);
        if (v < 0)
            return -1;
        *blocking = v;
    }
    *timeout = (t == NULL) ? Py_None : t;
    if (!*blocking && *timeout != Py_None) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return -1;
    }
    return 0;
}

static PyObject *
sem_acquire(SemObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int blocking = 1;
    PyObject *timeout = Py_None;
    if ((nargs || kwnames) &&
        parse_acquire_args(args, nargs, kwnames, &blocking, &timeout) < 0)
        return NULL;
    if (sem_check_bound(self) < 0)
        return NULL;
    ss_deadline dl;
    if (ss_parse_timeout(timeout, &dl) < 0)
        return NULL;
    short flg = self->undo ? SEM_UNDO : 0;
    struct sembuf op = {self->num, -1, flg};
    struct sembuf op_nowait = {self->num, -1, (short)(flg | IPC_NOWAIT)};
    /* The IPC_NOWAIT probe saves a GIL round trip when the semaphore is free,
     * but is a wasted syscall when it is not.  After a probe finds it taken,
     * the next blocking acquires on this handle wait at once, for a stretch
     * that doubles while probes keep failing (a ping-pong, where every
     * acquire waits) and resets when one succeeds. */
    int probe = !blocking || self->skip_probe == 0;
    int probe_failed;
    if (!probe)
        self->skip_probe--;
    /* A reference of our own: while we wait without the GIL, another thread
     * may _bind this handle again, which drops the handle's key; ours is
     * what an error names afterwards. */
    PyObject *key = self->key;  /* NULL only after tp_clear */
    Py_XINCREF(key);
    int r = semop_ex(self->state, self->semid, &op, &op_nowait, 1, blocking, probe, &dl,
                        key, &probe_failed);
    Py_XDECREF(key);
    if (probe && blocking) {
        if (probe_failed) {
            self->skip_len = self->skip_len == 0 ? SKIP_PROBE_MIN
                             : self->skip_len >= SKIP_PROBE_MAX ? SKIP_PROBE_MAX
                                                                : 2 * self->skip_len;
            self->skip_probe = self->skip_len;
        } else {
            self->skip_len = 0;
        }
    }
    if (r < 0)
        return NULL;
    if (r == 1 && self->is_lock) {
        self->held = 1;
        self->held_pid = getpid();
    }
    return PyBool_FromLong(r);
}

static PyObject *
sem_release(SemObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long n = 1;
    if (!ss_check_nargs("release", nargs, 0, 1))
        return NULL;
    if (nargs == 1) {
        int overflow;
        n = PyLong_AsLongAndOverflow(args[0], &overflow);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (overflow)  /* refused below, as too large or as negative */
            n = overflow > 0 ? LONG_MAX : -1;
    }
    if (sem_check_bound(self) < 0)
        return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n must be one or more");
        return NULL;
    }
    if (n > SS_SEMVMX) {
        PyErr_Format(PyExc_ValueError, "n=%ld exceeds SEMVMX (%d), the largest semaphore value",
                     n, SS_SEMVMX);
        return NULL;
    }
    if (self->is_lock) {
        if (!self->held) {
            PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
            return NULL;
        }
        if (self->held_pid != getpid()) {
            PyErr_Format(PyExc_RuntimeError,
                         "lock was acquired by process %d; a forked child cannot release it "
                         "(the kernel's SEM_UNDO record belongs to the acquiring process)",
                         (int)self->held_pid);
            return NULL;
        }
        if (n != 1) {
            PyErr_SetString(PyExc_ValueError, "a Lock is released once");
            return NULL;
        }
    }
    short flg = self->undo ? SEM_UNDO : 0;
    struct sembuf op = {self->num, (short)n, flg};
    /* Adding never blocks, so this stays on the GIL-held path. */
    if (semop(self->semid, &op, 1) < 0)
        return ss_raise_errno(self->state, "semop", self->key, self->semid);
    if (self->is_lock)
        self->held = 0;
    Py_RETURN_NONE;
}

/* __enter__ and __exit__ in C, as threading.Lock has them: with Python-level
 * ones, a signal handler (KeyboardInterrupt) could run between the acquire
 * and the start of the with block, or at the start of __exit__, and leave
 * the semaphore taken with nobody inside. */
static PyObject *
sem_enter(SemObject *self, PyObject *unused)
{
    return sem_acquire(self, NULL, 0, NULL);
}

static PyObject *
sem_exit(SemObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *r = sem_release(self, NULL, 0);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *
sem_get_id(SemObject *self, void *closure)
{
    return PyLong_FromLong(self->semid);
}

static PyObject *
sem_get_num(SemObject *self, void *closure)
{
    return PyLong_FromLong(self->num);
}

static PyObject *
sem_get_key(SemObject *self, void *closure)
{
    return Py_NewRef(self->key != NULL ? self->key : Py_None);
}

static PyObject *
sem_get_undo(SemObject *self, void *closure)
{
    return PyBool_FromLong(self->undo);
}

static PyObject *
sem_get_held(SemObject *self, void *closure)
{
    return PyBool_FromLong(self->held && self->held_pid == getpid());
}

static PyMethodDef sem_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))sem_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire($self, blocking=True, timeout=None)\n--\n\n"
     "Decrement the semaphore, waiting while it is zero.  Returns True, or False\n"
     "when blocking is false or the timeout expires.  The GIL is released while\n"
     "waiting; signal handlers run, and their exceptions propagate.\n"
     "Raises RemovedError if the set is removed while waiting."},
    {"release", (PyCFunction)(void (*)(void))sem_release, METH_FASTCALL,
     "release($self, n=1, /)\n--\n\nIncrement the semaphore by n (never blocks).\n"
     "Raises ValueError when the value would exceed SEMVMX."},
    {"__enter__", (PyCFunction)sem_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nacquire(), waiting as long as it takes."},
    {"__exit__", (PyCFunction)(void (*)(void))sem_exit, METH_FASTCALL,
     "__exit__($self, /, *exc_info)\n--\n\nrelease()."},
    {"_bind", (PyCFunction)(void (*)(void))sem_bind, METH_VARARGS | METH_KEYWORDS,
     "_bind($self, semid, num=0, key=None, undo=False, lock=False)\n--\n\n"
     "Point this handle at member num of set semid."},
    {"_unbind", (PyCFunction)sem_unbind, METH_NOARGS,
     "_unbind($self)\n--\n\nForget the set; later operations raise ClosedError."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sem_getset[] = {
    {"id", (getter)sem_get_id, NULL, "semaphore set id (-1 when closed)", NULL},
    {"num", (getter)sem_get_num, NULL, "index of this member in its set", NULL},
    {"key", (getter)sem_get_key, NULL, "the key, or None when unknown", NULL},
    {"undo", (getter)sem_get_undo, NULL, "whether operations use SEM_UNDO", NULL},
    {"_held", (getter)sem_get_held, NULL, "a Lock held by this handle in this process",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sem_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SemObject, weakreflist), READONLY},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot sem_slots[] = {
    {Py_tp_new, sem_new},
    {Py_tp_dealloc, sem_dealloc},
    {Py_tp_traverse, sem_traverse},
    {Py_tp_clear, sem_clear},
    {Py_tp_methods, sem_methods},
    {Py_tp_getset, sem_getset},
    {Py_tp_members, sem_members},
    {Py_tp_doc, "Base of shmsem.Semaphore and shmsem.Lock: acquire/release in C."},
    {0, NULL},
};

PyType_Spec ss_sem_spec = {
    .name = "shmsem._core.SemBase",
    .basicsize = sizeof(SemObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = sem_slots,
};

/* ------------------------------------------------------------------------ */
/* Module functions over semget/semop/semctl. */

static PyObject *
ipc_semget(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    key_t key;
    int nsems, flags;
    if (!ss_check_nargs("semget", nargs, 3, 3) || ss_parse_key(args[0], &key) < 0 ||
        ss_arg_int(args[1], "nsems", &nsems) < 0 || ss_arg_int(args[2], "flags", &flags) < 0)
        return NULL;
    if (nsems < 0) {
        PyErr_Format(PyExc_ValueError, "nsems must be non-negative, not %d", nsems);
        return NULL;
    }
    int id = semget(key, nsems, flags);
    if (id < 0) {
        return ss_raise_for_key(st, errno, "semget", key);
    }
    return PyLong_FromLong(id);
}

/* Convert one op: (num, delta) or (num, delta, flags). */
static int
parse_sembuf(PyObject *item, struct sembuf *op)
{
    PyObject *seq = PySequence_Fast(item, "each op must be a tuple (index, delta[, flags])");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int num, delta, flg = 0, rc = -1;
    if (n != 2 && n != 3) {
        PyErr_SetString(PyExc_ValueError, "each op must be (index, delta) or (index, delta, flags)");
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    if (ss_arg_int(items[0], "semaphore index", &num) < 0 ||
        ss_arg_int(items[1], "semaphore delta", &delta) < 0 ||
        (n == 3 && ss_arg_int(items[2], "op flags", &flg) < 0))
        goto done;
    if (num < 0 || num > 65535) {
        PyErr_Format(PyExc_ValueError, "semaphore index %d is out of range", num);
        goto done;
    }
    if (delta < -SS_SEMVMX || delta > SS_SEMVMX) {
        PyErr_Format(PyExc_ValueError, "semaphore delta %d exceeds SEMVMX (%d)", delta, SS_SEMVMX);
        goto done;
    }
    if (flg & ~(IPC_NOWAIT | SEM_UNDO)) {
        PyErr_Format(PyExc_ValueError, "op flags 0x%x: only IPC_NOWAIT and SEM_UNDO are allowed",
                     flg);
        goto done;
    }
    op->sem_num = (unsigned short)num;
    op->sem_op = (short)delta;
    op->sem_flg = (short)flg;
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

static PyObject *
ipc_semop(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"semid", "ops", "timeout", "blocking", "undo", "key", NULL};
    ss_state *st = ss_state_from_module(module);
    PyObject *idobj, *opsobj, *timeout = Py_None, *key = Py_None;
    int blocking = 1, undo = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OppO:semop", kwlist, &idobj, &opsobj,
                                     &timeout, &blocking, &undo, &key))
        return NULL;
    int semid;
    if (ss_arg_id(idobj, "semid", &semid) < 0)
        return NULL;
    ss_deadline dl;
    if (ss_parse_timeout(timeout, &dl) < 0)
        return NULL;
    if (!PySequence_Check(opsobj)) {
        PyErr_SetString(PyExc_TypeError, "ops must be a sequence of (index, delta[, flags])");
        return NULL;
    }
    /* A private copy: parsing an item can run Python code that mutates ops. */
    PyObject *seq = PySequence_Tuple(opsobj);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (n == 0 || n > 65535) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "ops must hold between 1 and 65535 operations");
        return NULL;
    }
    struct sembuf stack_ops[16];
    struct sembuf *ops = stack_ops;
    if (n > 8) {
        ops = PyMem_New(struct sembuf, 2 * (size_t)n);
        if (ops == NULL) {
            Py_DECREF(seq);
            return PyErr_NoMemory();
        }
    }
    struct sembuf *nowait_ops = ops + n;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_sembuf(PyTuple_GET_ITEM(seq, i), &ops[i]) < 0)
            goto done;
        if (undo)
            ops[i].sem_flg |= SEM_UNDO;
        nowait_ops[i] = ops[i];
        nowait_ops[i].sem_flg |= IPC_NOWAIT;
    }
    int r = semop_once(st, semid, ops, nowait_ops, (size_t)n, blocking, &dl, key);
    if (r >= 0)
        result = PyBool_FromLong(r);
done:
    if (ops != stack_ops)
        PyMem_Free(ops);
    Py_DECREF(seq);
    return result;
}

static PyObject *
ipc_semctl(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id, num, cmd, value = 0;
    if (!ss_check_nargs("semctl", nargs, 3, 5) || ss_arg_id(args[0], "semid", &id) < 0 ||
        ss_arg_int(args[1], "semnum", &num) < 0 || ss_arg_int(args[2], "cmd", &cmd) < 0 ||
        (nargs >= 4 && ss_arg_int(args[3], "value", &value) < 0))
        return NULL;
    PyObject *key = nargs > 4 ? args[4] : NULL;
    const char *name;
    switch (cmd) {
    case GETVAL: name = "semctl(GETVAL)"; break;
    case GETPID: name = "semctl(GETPID)"; break;
    case GETNCNT: name = "semctl(GETNCNT)"; break;
    case GETZCNT: name = "semctl(GETZCNT)"; break;
    case SETVAL:
        name = "semctl(SETVAL)";
        if (value < 0 || value > SS_SEMVMX) {
            PyErr_Format(PyExc_ValueError,
                         "semaphore value %d is out of range [0, SEMVMX=%d]", value, SS_SEMVMX);
            return NULL;
        }
        break;
    case IPC_RMID: name = "semctl(IPC_RMID)"; break;
    default:
        PyErr_Format(PyExc_ValueError, "unsupported semctl command %d", cmd);
        return NULL;
    }
    /* Not capped at 65535: that bounds semop's sem_num, but a set may have
     * up to SEMMSL members, and semctl reaches them all (the kernel checks
     * the index against the set). */
    if (num < 0) {
        PyErr_Format(PyExc_ValueError, "semaphore index %d is out of range", num);
        return NULL;
    }
    union ss_semun arg = {.val = value};
    int rc = semctl(id, num, cmd, arg);
    if (rc < 0)
        return ss_raise_errno(st, name, key, id);
    return PyLong_FromLong(rc);
}

static int
sem_nsems(ss_state *st, int id, struct semid_ds *ds, PyObject *key)
{
    union ss_semun arg = {.buf = ds};
    if (semctl(id, 0, IPC_STAT, arg) < 0) {
        ss_raise_errno(st, "semctl(IPC_STAT)", key, id);
        return -1;
    }
    if (ds->sem_nsems > INT_MAX) { /* the kernel's own limit is far lower */
        PyErr_Format(PyExc_OverflowError, "semaphore set id=%d reports %lu members", id,
                     (unsigned long)ds->sem_nsems);
        return -1;
    }
    return (int)ds->sem_nsems;
}

static PyObject *
ipc_sem_stat(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id;
    if (!ss_check_nargs("sem_stat", nargs, 1, 2) || ss_arg_id(args[0], "semid", &id) < 0)
        return NULL;
    PyObject *key = nargs > 1 ? args[1] : NULL;
    struct semid_ds ds;
    if (sem_nsems(st, id, &ds, key) < 0)
        return NULL;
    return Py_BuildValue("(iIIIIIkLL)", (int)SS_PERM_KEY(ds.sem_perm),
                         (unsigned)ds.sem_perm.uid, (unsigned)ds.sem_perm.gid,
                         (unsigned)ds.sem_perm.cuid, (unsigned)ds.sem_perm.cgid,
                         (unsigned)ds.sem_perm.mode, (unsigned long)ds.sem_nsems,
                         (long long)ds.sem_otime, (long long)ds.sem_ctime);
}

/* GETALL and SETALL move as many values as the set has *when they run*, and
 * the kernel is given no length.  The buffer is sized from the IPC_STAT just
 * before (never from SEMMSL, which can be raised to anything: the 16 bits of
 * sem_num limit semop, not the size of a set).  Should the id be removed and
 * reused by a larger set in between, the kernel would write (GETALL) or read
 * (SETALL) past the end of the buffer; so the buffer ends exactly where an
 * inaccessible guard page begins, and the kernel then fails with EFAULT
 * instead of touching anything else of ours. */
typedef struct {
    void *map;
    size_t maplen;
} semall_buf;

static unsigned short *
semall_alloc(semall_buf *b, int n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t bytes = (size_t)n * sizeof(unsigned short);  /* 0 <= n <= INT_MAX: no overflow */
    size_t data = (bytes + page - 1) / page * page;
    b->maplen = data + page;
    b->map = mmap(NULL, b->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->map == MAP_FAILED) {
        b->map = NULL;
        PyErr_NoMemory();
        return NULL;
    }
    if (mprotect((char *)b->map + data, page, PROT_NONE) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        munmap(b->map, b->maplen);
        b->map = NULL;
        return NULL;
    }
    return (unsigned short *)((char *)b->map + data - bytes);
}

static void
semall_free(semall_buf *b)
{
    if (b->map != NULL)
        munmap(b->map, b->maplen);
    b->map = NULL;
}

/* GETALL/SETALL failed: EFAULT means the guard page above stopped the kernel. */
static void
semall_raise(ss_state *st, const char *syscall, PyObject *key, int id)
{
    if (errno == EFAULT)
        ss_raise(st, "os", EIDRM, syscall, key, id,
                 "its id was reused by a larger set while the values were being moved");
    else
        ss_raise_errno(st, syscall, key, id);
}

static PyObject *
ipc_sem_getall(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id;
    if (!ss_check_nargs("sem_getall", nargs, 1, 2) || ss_arg_id(args[0], "semid", &id) < 0)
        return NULL;
    PyObject *key = nargs > 1 ? args[1] : NULL;
    struct semid_ds ds;
    int n = sem_nsems(st, id, &ds, key);
    if (n < 0)
        return NULL;
    semall_buf buf;
    unsigned short *vals = semall_alloc(&buf, n);
    if (vals == NULL)
        return NULL;
    union ss_semun su = {.array = vals};
    PyObject *result = NULL;
    if (semctl(id, 0, GETALL, su) < 0) {
        semall_raise(st, "semctl(GETALL)", key, id);
    } else if ((result = PyTuple_New(n)) != NULL) {
        for (int i = 0; i < n; i++) {
            PyObject *v = PyLong_FromLong(vals[i]);
            if (v == NULL) {
                Py_CLEAR(result);
                break;
            }
            PyTuple_SET_ITEM(result, i, v);
        }
    }
    semall_free(&buf);
    return result;
}

static PyObject *
ipc_sem_setall(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id;
    if (!ss_check_nargs("sem_setall", nargs, 2, 3) || ss_arg_id(args[0], "semid", &id) < 0)
        return NULL;
    PyObject *key = nargs > 2 ? args[2] : NULL;
    PyObject *seq = PySequence_Fast(args[1], "values must be a sequence of ints");
    if (seq == NULL)
        return NULL;
    struct semid_ds ds;
    int n = sem_nsems(st, id, &ds, key);
    PyObject *result = NULL;
    semall_buf buf = {NULL, 0};
    if (n < 0)
        goto done;
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        PyErr_Format(PyExc_ValueError, "the set has %d semaphores but %zd values were given", n,
                     PySequence_Fast_GET_SIZE(seq));
        goto done;
    }
    unsigned short *vals = semall_alloc(&buf, n);
    if (vals == NULL)
        goto done;
    for (int i = 0; i < n; i++) {
        int v;
        if (ss_arg_int(PySequence_Fast_GET_ITEM(seq, i), "semaphore value", &v) < 0)
            goto done;
        if (v < 0 || v > SS_SEMVMX) {
            PyErr_Format(PyExc_ValueError, "semaphore value %d is out of range [0, SEMVMX=%d]",
                         v, SS_SEMVMX);
            goto done;
        }
        vals[i] = (unsigned short)v;
    }
    union ss_semun su = {.array = vals};
    if (semctl(id, 0, SETALL, su) < 0) {
        semall_raise(st, "semctl(SETALL)", key, id);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    semall_free(&buf);
    Py_DECREF(seq);
    return result;
}

static PyObject *
ipc_sem_set_mode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id, mode;
    if (!ss_check_nargs("sem_set_mode", nargs, 2, 3) || ss_arg_id(args[0], "semid", &id) < 0 ||
        ss_arg_int(args[1], "mode", &mode) < 0)
        return NULL;
    PyObject *key = nargs > 2 ? args[2] : NULL;
    struct semid_ds ds;
    if (sem_nsems(st, id, &ds, key) < 0)
        return NULL;
    ds.sem_perm.mode = (ds.sem_perm.mode & ~0777) | (mode & 0777);
    union ss_semun su = {.buf = &ds};
    if (semctl(id, 0, IPC_SET, su) < 0)
        return ss_raise_errno(st, "semctl(IPC_SET)", key, id);
    Py_RETURN_NONE;
}


PyMethodDef ss_sem_functions[] = {
    {"semget", (PyCFunction)(void (*)(void))ipc_semget, METH_FASTCALL,
     "semget(key, nsems, flags, /)\n--\n\nsemget(2); returns the set id."},
    {"semop", (PyCFunction)(void (*)(void))ipc_semop, METH_VARARGS | METH_KEYWORDS,
     "semop(semid, ops, timeout=None, blocking=True, undo=False, key=None)\n--\n\n"
     "Apply ops [(index, delta[, flags]), ...] atomically (semop/semtimedop).\n"
     "Returns True when applied, False when it would block or timed out."},
    {"semctl", (PyCFunction)(void (*)(void))ipc_semctl, METH_FASTCALL,
     "semctl(semid, semnum, cmd, value=0, key=None, /)\n--\n\n"
     "semctl(2) for GETVAL, SETVAL, GETPID, GETNCNT, GETZCNT and IPC_RMID."},
    {"sem_stat", (PyCFunction)(void (*)(void))ipc_sem_stat, METH_FASTCALL,
     "sem_stat(semid, key=None, /)\n--\n\nsemctl(IPC_STAT) as (key, uid, gid, cuid, cgid, mode, nsems,\n"
     "otime, ctime)."},
    {"sem_getall", (PyCFunction)(void (*)(void))ipc_sem_getall, METH_FASTCALL,
     "sem_getall(semid, key=None, /)\n--\n\nsemctl(GETALL) as a tuple."},
    {"sem_setall", (PyCFunction)(void (*)(void))ipc_sem_setall, METH_FASTCALL,
     "sem_setall(semid, values, key=None, /)\n--\n\nsemctl(SETALL)."},
    {"sem_set_mode", (PyCFunction)(void (*)(void))ipc_sem_set_mode, METH_FASTCALL,
     "sem_set_mode(semid, mode, key=None, /)\n--\n\nsemctl(IPC_SET) of the permission bits."},
    {NULL, NULL, 0, NULL},
};
