/* System V message queues: module functions over msgget/msgsnd/msgrcv/msgctl. */
#include "shmsem.h"

#include <limits.h>
#include <stdio.h>
#include <unistd.h>

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
        ss_arg_int(args[1], "flags", &flags) < 0)
        return NULL;
    int id = msgget(key, flags);
    if (id < 0) {
        return ss_raise_for_key(st, errno, "msgget", key);
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
    if (!ss_check_nargs("msg_stat", nargs, 1, 2) || ss_arg_id(args[0], "msqid", &id) < 0)
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
    if (!ss_check_nargs("msg_set", nargs, 3, 4) || ss_arg_id(args[0], "msqid", &id) < 0 ||
        ss_arg_size(args[1], "max_bytes", &qbytes) < 0 || ss_arg_int(args[2], "mode", &mode) < 0)
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
    if (!ss_check_nargs("msg_rmid", nargs, 1, 2) || ss_arg_id(args[0], "msqid", &id) < 0)
        return NULL;
    PyObject *key = nargs > 1 ? args[1] : NULL;
    if (msgctl(id, IPC_RMID, NULL) < 0)
        return ss_raise_errno(st, "msgctl(IPC_RMID)", key, id);
    Py_RETURN_NONE;
}


PyMethodDef ss_msg_functions[] = {
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
    {NULL, NULL, 0, NULL},
};
