/* Module functions over the System V syscalls.  Thin on purpose: they take
 * ids and plain values, return plain values and tuples, and leave policy and
 * presentation to the Python modules. */
#include "shmsem.h"
#include "sem.h"

#include <limits.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

union ss_semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

/* ------------------------------------------------------------------------ */
/* Argument helpers. */

static int
get_int(PyObject *obj, const char *what, int *out)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow;
    long v = PyLong_AsLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < INT_MIN || v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s %R is out of range", what, obj);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int
get_id(PyObject *obj, const char *what, int *out)
{
    if (get_int(obj, what, out) < 0)
        return -1;
    if (*out < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be non-negative, not %d", what, *out);
        return -1;
    }
    return 0;
}

static int
get_size(PyObject *obj, const char *what, Py_ssize_t *out)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t v = PyLong_AsSsize_t(obj);
    if (v == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s %R is too large", what, obj);
        }
        return -1;
    }
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be non-negative, not %zd", what, v);
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *
key_object(key_t key)
{
    return PyLong_FromLong((long)key);
}

/* Raise for a failed shmget/semget/msgget, naming the key.  err is read by
 * the caller before anything here can change errno. */
static PyObject *
raise_for_key(ss_state *st, int err, const char *syscall, key_t key)
{
    PyObject *k = key_object(key);
    if (k == NULL)
        return NULL;
    ss_raise(st, "os", err, syscall, k, -1, NULL);
    Py_DECREF(k);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Shared memory. */

static PyObject *
ipc_shmget(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    key_t key;
    Py_ssize_t size;
    int flags;
    if (!ss_check_nargs("shmget", nargs, 3, 3) || ss_parse_key(args[0], &key) < 0 ||
        get_size(args[1], "size", &size) < 0 || get_int(args[2], "flags", &flags) < 0)
        return NULL;
    int id = shmget(key, (size_t)size, flags);
    if (id < 0) {
        return raise_for_key(st, errno, "shmget", key);
    }
    return PyLong_FromLong(id);
}

static PyObject *
ipc_shm_stat(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id;
    if (!ss_check_nargs("shm_stat", nargs, 1, 2) || get_id(args[0], "shmid", &id) < 0)
        return NULL;
    PyObject *key = nargs > 1 ? args[1] : NULL;
    struct shmid_ds ds;
    if (shmctl(id, IPC_STAT, &ds) < 0)
        return ss_raise_errno(st, "shmctl(IPC_STAT)", key, id);
    return Py_BuildValue("(iIIIIInLLLiik)", (int)SS_PERM_KEY(ds.shm_perm),
                         (unsigned)ds.shm_perm.uid, (unsigned)ds.shm_perm.gid,
                         (unsigned)ds.shm_perm.cuid, (unsigned)ds.shm_perm.cgid,
                         (unsigned)ds.shm_perm.mode, (Py_ssize_t)ds.shm_segsz,
                         (long long)ds.shm_atime, (long long)ds.shm_dtime,
                         (long long)ds.shm_ctime, (int)ds.shm_cpid, (int)ds.shm_lpid,
                         (unsigned long)ds.shm_nattch);
}

static PyObject *
ipc_shm_rmid(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id;
    if (!ss_check_nargs("shm_rmid", nargs, 1, 2) || get_id(args[0], "shmid", &id) < 0)
        return NULL;
    PyObject *key = nargs > 1 ? args[1] : NULL;
    if (shmctl(id, IPC_RMID, NULL) < 0)
        return ss_raise_errno(st, "shmctl(IPC_RMID)", key, id);
    Py_RETURN_NONE;
}

static PyObject *
ipc_shm_set_mode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id, mode;
    if (!ss_check_nargs("shm_set_mode", nargs, 2, 3) || get_id(args[0], "shmid", &id) < 0 ||
        get_int(args[1], "mode", &mode) < 0)
        return NULL;
    PyObject *key = nargs > 2 ? args[2] : NULL;
    struct shmid_ds ds;
    if (shmctl(id, IPC_STAT, &ds) < 0)
        return ss_raise_errno(st, "shmctl(IPC_STAT)", key, id);
    ds.shm_perm.mode = (ds.shm_perm.mode & ~0777) | (mode & 0777);
    if (shmctl(id, IPC_SET, &ds) < 0)
        return ss_raise_errno(st, "shmctl(IPC_SET)", key, id);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* Semaphores. */

static PyObject *
ipc_semget(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    key_t key;
    int nsems, flags;
    if (!ss_check_nargs("semget", nargs, 3, 3) || ss_parse_key(args[0], &key) < 0 ||
        get_int(args[1], "nsems", &nsems) < 0 || get_int(args[2], "flags", &flags) < 0)
        return NULL;
    if (nsems < 0) {
        PyErr_Format(PyExc_ValueError, "nsems must be non-negative, not %d", nsems);
        return NULL;
    }
    int id = semget(key, nsems, flags);
    if (id < 0) {
        return raise_for_key(st, errno, "semget", key);
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
    if (get_int(items[0], "semaphore index", &num) < 0 ||
        get_int(items[1], "semaphore delta", &delta) < 0 ||
        (n == 3 && get_int(items[2], "op flags", &flg) < 0))
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
        PyErr_Format(PyExc_ValueError, "op flags %#x: only IPC_NOWAIT and SEM_UNDO are allowed",
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
    if (get_id(idobj, "semid", &semid) < 0)
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
    int r = ss_semop(st, semid, ops, nowait_ops, (size_t)n, blocking, &dl, key);
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
    if (!ss_check_nargs("semctl", nargs, 3, 5) || get_id(args[0], "semid", &id) < 0 ||
        get_int(args[1], "semnum", &num) < 0 || get_int(args[2], "cmd", &cmd) < 0 ||
        (nargs >= 4 && get_int(args[3], "value", &value) < 0))
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
    if (!ss_check_nargs("sem_stat", nargs, 1, 2) || get_id(args[0], "semid", &id) < 0)
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
    if (!ss_check_nargs("sem_getall", nargs, 1, 2) || get_id(args[0], "semid", &id) < 0)
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
    if (!ss_check_nargs("sem_setall", nargs, 2, 3) || get_id(args[0], "semid", &id) < 0)
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
        if (get_int(PySequence_Fast_GET_ITEM(seq, i), "semaphore value", &v) < 0)
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
    if (!ss_check_nargs("sem_set_mode", nargs, 2, 3) || get_id(args[0], "semid", &id) < 0 ||
        get_int(args[1], "mode", &mode) < 0)
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

/* ------------------------------------------------------------------------ */
/* Message queues.
 *
 * Linux has no timed msgsnd/msgrcv.  Untimed blocking calls block in the
 * kernel with the GIL released; timed ones poll with IPC_NOWAIT, sleeping
 * between attempts with a backoff that starts at 20 us and is capped at 1 ms,
 * which bounds the extra latency a timed call can add. */

#define MSG_POLL_MIN_NS 20000LL
#define MSG_POLL_MAX_NS 1000000LL

static PyObject *
ipc_msgget(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    key_t key;
    int flags;
    if (!ss_check_nargs("msgget", nargs, 2, 2) || ss_parse_key(args[0], &key) < 0 ||
        get_int(args[1], "flags", &flags) < 0)
        return NULL;
    int id = msgget(key, flags);
    if (id < 0) {
        return raise_for_key(st, errno, "msgget", key);
    }
    return PyLong_FromLong(id);
}

/* Shared loop for msgsnd/msgrcv.  attempt() runs without the GIL and returns
 * the syscall's result with errno set.  Returns the result, or -1 with errno;
 * *async_err is set when a signal handler raised. */
typedef ssize_t (*msg_attempt_fn)(void *ctx, int flags);
/* Called once, with the GIL, when the first attempt would block (whether or
 * not the caller will wait); -1 (exception set) aborts. */
typedef int (*msg_before_wait_fn)(void *ctx);

static ssize_t
msg_call(msg_attempt_fn attempt, msg_before_wait_fn before_wait, void *ctx, int blocking,
         const ss_deadline *dl, int wouldblock_errno, int *async_err)
{
    ssize_t rc = attempt(ctx, IPC_NOWAIT);  /* first try, GIL held */
    int err = errno;
    *async_err = 0;
    if (rc >= 0 || err != wouldblock_errno)
        return rc;
    if (before_wait != NULL && before_wait(ctx) < 0) {
        *async_err = 1; /* an exception is set */
        return -1;
    }
    if (!blocking) {
        errno = err;
        return rc;
    }
    int64_t backoff = MSG_POLL_MIN_NS;
    for (;;) {
        if (!dl->infinite && ss_remaining_ns(dl) == 0) {
            errno = wouldblock_errno;
            return -1;
        }
        Py_BEGIN_ALLOW_THREADS
        if (dl->infinite) {
            rc = attempt(ctx, 0);
            err = errno;
        } else {
            int64_t left = ss_remaining_ns(dl);
            if (ss_sleep_ns(backoff < left ? backoff : left) < 0) {
                rc = -1;
                err = EINTR;
            } else {
                rc = attempt(ctx, IPC_NOWAIT);
                err = errno;
            }
            backoff = backoff * 2 > MSG_POLL_MAX_NS ? MSG_POLL_MAX_NS : backoff * 2;
        }
        Py_END_ALLOW_THREADS
        if (rc >= 0)
            return rc;
        /* Every round, not only on EINTR: a signal that lands while we are not
         * asleep interrupts nothing, but its Python handler must still run. */
        if ((*async_err = PyErr_CheckSignals()) != 0)
            return -1;
        if (err == EINTR)
            continue;
        if (err != wouldblock_errno) {
            errno = err;
            return -1;
        }
    }
}

typedef struct {
    int id;
    void *buf;
    size_t len;
    long type;
    ss_state *st;
    PyObject *key;
} msg_ctx;

/* A message larger than the queue itself can never be sent (the kernel would
 * wait forever), so say so instead of "full". */
static int
check_fits_queue(void *p)
{
    msg_ctx *c = p;
    struct msqid_ds ds;
    if (msgctl(c->id, IPC_STAT, &ds) < 0) {
        if (errno == EACCES)
            return 0; /* write-only access: we cannot tell, so just wait */
        ss_raise_errno(c->st, "msgctl(IPC_STAT)", c->key, c->id);
        return -1;
    }
    /* The kernel also counts each message against msg_qbytes, so a queue
     * whose max_bytes is 0 takes nothing at all. */
    if (c->len > (size_t)ds.msg_qbytes || ds.msg_qbytes == 0) {
        PyErr_Format(PyExc_ValueError,
                     "message of %zu bytes can never fit queue id=%d, whose max_bytes is %lu "
                     "(raise it with MessageQueue.max_bytes, up to kernel.msgmnb for non-root "
                     "users)",
                     c->len, c->id, (unsigned long)ds.msg_qbytes);
        return -1;
    }
    return 0;
}

static ssize_t
attempt_send(void *p, int flags)
{
    msg_ctx *c = p;
    return msgsnd(c->id, c->buf, c->len, flags);
}

static ssize_t
attempt_recv(void *p, int flags)
{
    msg_ctx *c = p;
    return msgrcv(c->id, c->buf, c->len, c->type, flags);
}

static PyObject *
ipc_msgsnd(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"msqid", "data", "type", "blocking", "timeout", "key", NULL};
    ss_state *st = ss_state_from_module(module);
    int id;
    Py_buffer data;
    long type = 1;
    int blocking = 1;
    PyObject *timeout = Py_None, *key = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*|lpOO:msgsnd", kwlist, &id, &data, &type,
                                     &blocking, &timeout, &key))
        return NULL;
    PyObject *result = NULL;
    char *buf = NULL;
    ss_deadline dl;
    if (ss_parse_timeout(timeout, &dl) < 0)
        goto done;
    if (id < 0) {
        PyErr_SetString(PyExc_ValueError, "msqid must be non-negative");
        goto done;
    }
    if (type <= 0) {
        PyErr_Format(PyExc_ValueError, "message type must be positive, not %ld", type);
        goto done;
    }
    buf = PyMem_Malloc(sizeof(long) + (size_t)data.len);
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(buf, &type, sizeof(long));
    if ((size_t)data.len >= SS_NOGIL_COPY_THRESHOLD) {
        /* buf is private and the view is held: no Python state is touched. */
        Py_BEGIN_ALLOW_THREADS
        memcpy(buf + sizeof(long), data.buf, (size_t)data.len);
        Py_END_ALLOW_THREADS
    } else {
        memcpy(buf + sizeof(long), data.buf, (size_t)data.len);
    }
    msg_ctx ctx = {id, buf, (size_t)data.len, type, st, key};
    int async_err, send_err = 0;
    ssize_t rc = msg_call(attempt_send, check_fits_queue, &ctx, blocking, &dl, EAGAIN, &async_err);
    if (rc >= 0)
        result = Py_NewRef(Py_True);
    else if (async_err)
        ;
    else if (errno == EAGAIN)
        result = Py_NewRef(Py_False);
    else if ((send_err = errno) == EINVAL && msgctl(id, IPC_STAT, &(struct msqid_ds){0}) == 0) {
        /* The queue exists, so EINVAL means the message exceeds MSGMAX. */
        char detail[200];
        snprintf(detail, sizeof detail,
                 "a message of %zd bytes exceeds the kernel's limit for one message; "
                 "raise kernel.msgmax (sysctl -w kernel.msgmax=BYTES)", data.len);
        ss_raise(st, "limit", EINVAL, "msgsnd", key, id, detail);
    } else
        ss_raise(st, "os", send_err, "msgsnd", key, id, NULL);
done:
    PyMem_Free(buf);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *
ipc_msgrcv(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"msqid", "bufsize", "type", "blocking", "timeout", "key", NULL};
    ss_state *st = ss_state_from_module(module);
    int id;
    Py_ssize_t bufsize;
    long type = 0;
    int blocking = 1;
    PyObject *timeout = Py_None, *key = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "in|lpOO:msgrcv", kwlist, &id, &bufsize, &type,
                                     &blocking, &timeout, &key))
        return NULL;
    ss_deadline dl;
    if (ss_parse_timeout(timeout, &dl) < 0)
        return NULL;
    if (id < 0 || bufsize < 0) {
        PyErr_SetString(PyExc_ValueError, "msqid and bufsize must be non-negative");
        return NULL;
    }
    if (bufsize < 64)
        bufsize = 64;
    for (;;) {
        char *buf = PyMem_Malloc(sizeof(long) + (size_t)bufsize);
        if (buf == NULL)
            return PyErr_NoMemory();
        msg_ctx ctx = {id, buf, (size_t)bufsize, type, st, key};
        int async_err;
        ssize_t rc = msg_call(attempt_recv, NULL, &ctx, blocking, &dl, ENOMSG, &async_err);
        if (rc < 0 && !async_err && errno == E2BIG && bufsize < INT_MAX / 4) {
            /* The waiting message is larger than the buffer (MSGMAX was lowered
             * after it was sent): grow and try again.  Never truncate. */
            PyMem_Free(buf);
            bufsize *= 4;
            continue;
        }
        PyObject *result = NULL;
        if (rc >= 0) {
            long mtype;
            memcpy(&mtype, buf, sizeof mtype);
            result = Py_BuildValue("(y#l)", buf + sizeof(long), (Py_ssize_t)rc, mtype);
        } else if (async_err) {
            ;
        } else if (errno == ENOMSG) { /* msg_call reports "would block" as ENOMSG */
            result = Py_NewRef(Py_None);
        } else {
            ss_raise_errno(st, "msgrcv", key, id);
        }
        PyMem_Free(buf);
        return result;
    }
}

static PyObject *
ipc_msg_stat(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id;
    if (!ss_check_nargs("msg_stat", nargs, 1, 2) || get_id(args[0], "msqid", &id) < 0)
        return NULL;
    PyObject *key = nargs > 1 ? args[1] : NULL;
    struct msqid_ds ds;
    if (msgctl(id, IPC_STAT, &ds) < 0)
        return ss_raise_errno(st, "msgctl(IPC_STAT)", key, id);
    return Py_BuildValue("(iIIIIIkkkiiLLL)", (int)SS_PERM_KEY(ds.msg_perm),
                         (unsigned)ds.msg_perm.uid, (unsigned)ds.msg_perm.gid,
                         (unsigned)ds.msg_perm.cuid, (unsigned)ds.msg_perm.cgid,
                         (unsigned)ds.msg_perm.mode, (unsigned long)SS_MSG_CBYTES(ds),
                         (unsigned long)ds.msg_qnum, (unsigned long)ds.msg_qbytes,
                         (int)ds.msg_lspid, (int)ds.msg_lrpid, (long long)ds.msg_stime,
                         (long long)ds.msg_rtime, (long long)ds.msg_ctime);
}

static PyObject *
ipc_msg_set(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id, mode;
    Py_ssize_t qbytes;
    if (!ss_check_nargs("msg_set", nargs, 3, 4) || get_id(args[0], "msqid", &id) < 0 ||
        get_size(args[1], "max_bytes", &qbytes) < 0 || get_int(args[2], "mode", &mode) < 0)
        return NULL;
    PyObject *key = nargs > 3 ? args[3] : NULL;
    struct msqid_ds ds;
    if (msgctl(id, IPC_STAT, &ds) < 0)
        return ss_raise_errno(st, "msgctl(IPC_STAT)", key, id);
    /* The kernel keeps msg_qbytes in 32 bits and silently drops the rest
     * (2**32 reads back as 0), so refuse what it cannot hold. */
    if ((uint64_t)qbytes > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "max_bytes %zd is too large: the kernel holds at most %lu",
                     qbytes, (unsigned long)UINT32_MAX);
        return NULL;
    }
    int raising = (msglen_t)qbytes > ds.msg_qbytes;
    ds.msg_qbytes = (msglen_t)qbytes;
    if (mode >= 0)
        ds.msg_perm.mode = (ds.msg_perm.mode & ~0777) | (mode & 0777);
    if (msgctl(id, IPC_SET, &ds) < 0) {
        if (errno == EPERM && raising)
            return ss_raise(st, "os", errno, "msgctl(IPC_SET)", key, id,
                            "raising max_bytes above kernel.msgmnb needs CAP_SYS_RESOURCE; "
                            "raise the sysctl kernel.msgmnb instead");
        return ss_raise_errno(st, "msgctl(IPC_SET)", key, id);
    }
    Py_RETURN_NONE;
}

static PyObject *
ipc_msg_rmid(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id;
    if (!ss_check_nargs("msg_rmid", nargs, 1, 2) || get_id(args[0], "msqid", &id) < 0)
        return NULL;
    PyObject *key = nargs > 1 ? args[1] : NULL;
    if (msgctl(id, IPC_RMID, NULL) < 0)
        return ss_raise_errno(st, "msgctl(IPC_RMID)", key, id);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */

static PyObject *
ipc_ftok(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    PyObject *path = NULL;
    int proj;
    if (!ss_check_nargs("ftok", nargs, 2, 2))
        return NULL;
    if (get_int(args[1], "proj_id", &proj) < 0)
        return NULL;
    if (proj < 1 || proj > 255) {
        PyErr_Format(PyExc_ValueError,
                     "proj_id must be in [1, 255] (ftok uses only its low 8 bits), not %d",
                     proj);
        return NULL;
    }
    if (!PyUnicode_FSConverter(args[0], &path))
        return NULL;
    key_t key = ftok(PyBytes_AS_STRING(path), proj);
    if (key == (key_t)-1) {
        int err = errno;
        PyObject *detail = PyUnicode_FromFormat("path %R", args[0]);
        Py_DECREF(path);
        const char *text = detail ? PyUnicode_AsUTF8(detail) : NULL;
        if (text != NULL)
            ss_raise(st, "os", err, "ftok", NULL, -1, text);
        Py_XDECREF(detail);
        return NULL;
    }
    Py_DECREF(path);
    return key_object(key);
}

PyMethodDef ss_ipc_functions[] = {
    {"shmget", (PyCFunction)(void (*)(void))ipc_shmget, METH_FASTCALL,
     "shmget(key, size, flags, /)\n--\n\nshmget(2); returns the segment id."},
    {"shm_stat", (PyCFunction)(void (*)(void))ipc_shm_stat, METH_FASTCALL,
     "shm_stat(shmid, key=None, /)\n--\n\nshmctl(IPC_STAT) as (key, uid, gid, cuid, cgid, mode, size,\n"
     "atime, dtime, ctime, cpid, lpid, nattch)."},
    {"shm_rmid", (PyCFunction)(void (*)(void))ipc_shm_rmid, METH_FASTCALL, "shm_rmid(shmid, key=None, /)\n--\n\nshmctl(IPC_RMID)."},
    {"shm_set_mode", (PyCFunction)(void (*)(void))ipc_shm_set_mode, METH_FASTCALL,
     "shm_set_mode(shmid, mode, key=None, /)\n--\n\nshmctl(IPC_SET) of the permission bits."},
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
    {"msgget", (PyCFunction)(void (*)(void))ipc_msgget, METH_FASTCALL,
     "msgget(key, flags, /)\n--\n\nmsgget(2); returns the queue id."},
    {"msgsnd", (PyCFunction)(void (*)(void))ipc_msgsnd, METH_VARARGS | METH_KEYWORDS,
     "msgsnd(msqid, data, type=1, blocking=True, timeout=None, key=None)\n--\n\n"
     "Send one message.  Returns True, or False when the queue stayed full."},
    {"msgrcv", (PyCFunction)(void (*)(void))ipc_msgrcv, METH_VARARGS | METH_KEYWORDS,
     "msgrcv(msqid, bufsize, type=0, blocking=True, timeout=None, key=None)\n--\n\n"
     "Receive one message as (data, type), or None when none arrived."},
    {"msg_stat", (PyCFunction)(void (*)(void))ipc_msg_stat, METH_FASTCALL,
     "msg_stat(msqid, key=None, /)\n--\n\nmsgctl(IPC_STAT) as (key, uid, gid, cuid, cgid, mode, cbytes,\n"
     "qnum, qbytes, lspid, lrpid, stime, rtime, ctime)."},
    {"msg_set", (PyCFunction)(void (*)(void))ipc_msg_set, METH_FASTCALL,
     "msg_set(msqid, max_bytes, mode, key=None, /)\n--\n\n"
     "msgctl(IPC_SET) of msg_qbytes, and of the permission bits unless mode < 0."},
    {"msg_rmid", (PyCFunction)(void (*)(void))ipc_msg_rmid, METH_FASTCALL, "msg_rmid(msqid, key=None, /)\n--\n\nmsgctl(IPC_RMID)."},
    {"ftok", (PyCFunction)(void (*)(void))ipc_ftok, METH_FASTCALL,
     "ftok(path, proj_id, /)\n--\n\nftok(3): a key from an existing path and a project id."},
    {NULL, NULL, 0, NULL},
};
