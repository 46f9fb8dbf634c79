/* System V semaphores: the semop engine and the Sem base type.
 *
 * Every wait first tries the operation with IPC_NOWAIT while holding the GIL
 * (the uncontended case then costs one syscall and no GIL round trip, as in
 * CPython's Modules/_multiprocessing/semaphore.c).  Only when that would block
 * does it release the GIL and wait, retrying EINTR with the time remaining on
 * CLOCK_MONOTONIC and running Python signal handlers in between (PEP 475).
 */
#include "shmsem.h"
#include "sem.h"

/* Returns 1 when the operation was applied, 0 when it would block (nowait, a
 * per-op IPC_NOWAIT, or the deadline passed), -1 with an exception set. */
int
ss_semop(ss_state *st, int semid, struct sembuf *ops, struct sembuf *nowait_ops, size_t n,
         int blocking, const ss_deadline *dl, PyObject *key)
{
    int probe_failed;
    return ss_semop_ex(st, semid, ops, nowait_ops, n, blocking, 1, dl, key, &probe_failed);
}

int
ss_semop_ex(ss_state *st, int semid, struct sembuf *ops, struct sembuf *nowait_ops, size_t n,
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
    int r = ss_semop_ex(self->state, self->semid, &op, &op_nowait, 1, blocking, probe, &dl,
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
