/* Module definition, state, and the helpers every other file shares:
 * errors, timeouts, keys, futexes. */
#include "shmsem.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* State lookup for objects of our types or of Python subclasses of them.
 * (PyType_GetModuleByDef would do this, but only from Python 3.11.) */

ss_state *
ss_state_from_type(PyTypeObject *tp)
{
    for (; tp != NULL; tp = tp->tp_base) {
        if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE))
            continue;
        PyObject *mod = ((PyHeapTypeObject *)tp)->ht_module;
        if (mod != NULL && PyModule_Check(mod) && PyModule_GetDef(mod) == &shmsem_module_def)
            return ss_state_from_module(mod);
    }
    PyErr_SetString(PyExc_SystemError, "shmsem._core: type is not from this module");
    return NULL;
}

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
PyObject *
ss_no_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyErr_Format(PyExc_TypeError, "cannot create '%.100s' instances", type->tp_name);
    return NULL;
}
#endif

/* ------------------------------------------------------------------------ */
/* Errors: every one goes through shmsem.errors._from_core(kind, errno,
 * syscall, key, id, detail), which returns the exception to raise. */

PyObject *
ss_raise(ss_state *st, const char *kind, int err, const char *syscall,
         PyObject *key, long id, const char *detail)
{
    if (st == NULL || st->error_factory == NULL) {
        /* Only possible before shmsem.errors has registered itself. */
        if (err) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
        } else {
            PyErr_Format(PyExc_ValueError, "%s: %s", syscall ? syscall : "shmsem",
                         detail ? detail : kind);
        }
        return NULL;
    }
    PyObject *args = Py_BuildValue(
        "(sizOOz)", kind, err, syscall, key ? key : Py_None, Py_None, detail);
    if (args == NULL)
        return NULL;
    if (id >= 0) {
        PyObject *idobj = PyLong_FromLong(id);
        if (idobj == NULL) {
            Py_DECREF(args);
            return NULL;
        }
        /* args is fresh and unshared, so filling a slot is allowed. */
        Py_SETREF(((PyTupleObject *)args)->ob_item[4], idobj);
    }
    PyObject *exc = PyObject_Call(st->error_factory, args, NULL);
    Py_DECREF(args);
    if (exc == NULL)
        return NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

PyObject *
ss_raise_errno(ss_state *st, const char *syscall, PyObject *key, long id)
{
    return ss_raise(st, "os", errno, syscall, key, id, NULL);
}

PyObject *
ss_raise_closed(ss_state *st, const char *what)
{
    return ss_raise(st, "closed", 0, NULL, NULL, -1, what);
}

PyObject *
ss_raise_format(SegmentObject *seg, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return ss_segment_raise(seg, "format", buf);
}

/* ------------------------------------------------------------------------ */
/* Timeouts. */

int
ss_parse_timeout(PyObject *timeout, ss_deadline *out)
{
    out->infinite = 1;
    out->deadline_ns = 0;
    if (timeout == NULL || timeout == Py_None)
        return 0;
    if (PyBool_Check(timeout) || !(PyFloat_Check(timeout) || PyLong_Check(timeout))) {
        /* Accept anything with __float__ except bool (a likely mix-up with block=). */
        if (PyBool_Check(timeout) || !PyNumber_Check(timeout)) {
            PyErr_Format(PyExc_TypeError,
                         "timeout must be a number of seconds or None, not %.100s",
                         Py_TYPE(timeout)->tp_name);
            return -1;
        }
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) {
        /* An int beyond float range: a huge positive one means forever, a
         * huge negative one is as wrong as -1. */
        if (!PyErr_ExceptionMatches(PyExc_OverflowError) || !PyLong_Check(timeout))
            return -1;
        PyErr_Clear();
        PyObject *zero = PyLong_FromLong(0);
        if (zero == NULL)
            return -1;
        int negative = PyObject_RichCompareBool(timeout, zero, Py_LT);
        Py_DECREF(zero);
        if (negative < 0)
            return -1;
        t = negative ? -1.0 : INFINITY;
    }
    if (isnan(t)) {
        PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
        return -1;
    }
    if (t < 0) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a non-negative number or None");
        return -1;
    }
    /* Anything beyond ~30 years is forever; it also keeps the arithmetic below
     * far from int64 overflow. */
    if (isinf(t) || t > 1e9)
        return 0;
    out->infinite = 0;
    out->deadline_ns = ss_now_ns() + (int64_t)(t * 1e9);
    return 0;
}

int
ss_sleep_ns(int64_t ns)
{
    if (ns <= 0)
        return 0;
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    return nanosleep(&ts, NULL);
}

int
ss_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
              const char *const *names, int nrequired, PyObject **out)
{
    int n = 0;
    while (names[n] != NULL)
        out[n++] = NULL;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname, n,
                     nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t k = 0; k < nkw; k++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, k);
            int i;
            for (i = 0; i < n; i++)
                if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0)
                    break;
            if (i == n) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             fname, name);
                return -1;
            }
            if (out[i] != NULL) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                             fname, names[i]);
                return -1;
            }
            out[i] = args[nargs + k];
        }
    }
    for (int i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

int
ss_parse_block_timeout(PyObject *block, PyObject *timeout, int *blocking, ss_deadline *dl)
{
    *blocking = 1;
    if (block != NULL) {
        int b = PyObject_IsTrue(block);
        if (b < 0)
            return -1;
        *blocking = b;
    }
    if (!*blocking) {
        dl->infinite = 0;
        dl->deadline_ns = 0;
        /* queue.Queue ignores the timeout when block is false; still refuse garbage. */
        ss_deadline ignored;
        return ss_parse_timeout(timeout, &ignored);
    }
    return ss_parse_timeout(timeout, dl);
}

/* ------------------------------------------------------------------------ */
/* Keys: an int in [-2**31, 2**32), reinterpreted as the 32-bit key_t.
 * Out of range raises ValueError; nothing is ever truncated. */

int
ss_parse_key(PyObject *obj, key_t *out)
{
    if (obj == Py_None) {
        *out = IPC_PRIVATE;
        return 0;
    }
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "key must be an int or None, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < -2147483648LL || v >= 4294967296LL) {
        PyErr_Format(PyExc_ValueError,
                     "key %R is out of range: keys are 32-bit, in [-2**31, 2**32)", obj);
        return -1;
    }
    *out = (key_t)(int32_t)(uint32_t)(v & 0xffffffffLL);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Futexes. */

int
ss_futex_wait(_Atomic uint32_t *addr, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0 && timeout_ns != INT64_MAX) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tsp = &ts;
    }
    return (int)syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, expected, tsp, NULL, 0);
}

void
ss_futex_wake(_Atomic uint32_t *addr, int n)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* Module-level functions defined here. */

static PyObject *
set_error_factory(PyObject *module, PyObject *factory)
{
    if (!PyCallable_Check(factory)) {
        PyErr_SetString(PyExc_TypeError, "error factory must be callable");
        return NULL;
    }
    ss_state *st = ss_state_from_module(module);
    Py_XSETREF(st->error_factory, Py_NewRef(factory));
    Py_RETURN_NONE;
}

static PyObject *
monotonic_ns(PyObject *module, PyObject *unused)
{
    return PyLong_FromLongLong(ss_now_ns());
}

static PyMethodDef module_methods[] = {
    {"_set_error_factory", set_error_factory, METH_O,
     "_set_error_factory(factory, /)\n--\n\n"
     "Register the callable that turns (kind, errno, syscall, key, id, detail)\n"
     "into an exception.  Called once by shmsem.errors at import."},
    {"monotonic_ns", monotonic_ns, METH_NOARGS,
     "monotonic_ns()\n--\n\nCLOCK_MONOTONIC in nanoseconds, the clock every timeout uses."},
    {"_lock_pair_ns", ss_lock_pair_ns, METH_VARARGS,
     "_lock_pair_ns(n, kind=0, /)\n--\n\n"
     "Mean nanoseconds of n uncontended lock/unlock pairs (GIL held): kind 0 is\n"
     "the process lock of Channel and Mailbox, kind 1 glibc's robust\n"
     "process-shared pthread mutex.  For benchmarks/lock.py."},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------------ */
/* Module init. */

static int
add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, spec, NULL);
    if (tp == NULL)
        return -1;
    *slot = (PyTypeObject *)tp;
    Py_INCREF(tp);
    if (PyModule_AddObject(module, strrchr(spec->name, '.') + 1, tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}

static int
shmsem_exec(PyObject *module)
{
    ss_state *st = ss_state_from_module(module);

    PyObject *queue = PyImport_ImportModule("queue");
    if (queue == NULL)
        return -1;
    st->queue_empty = PyObject_GetAttrString(queue, "Empty");
    st->queue_full = PyObject_GetAttrString(queue, "Full");
    Py_DECREF(queue);
    if (st->queue_empty == NULL || st->queue_full == NULL)
        return -1;

    st->pin_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ss_pin_spec, NULL);
    if (st->pin_type == NULL)
        return -1;
    if (add_type(module, &ss_segment_spec, &st->segment_type) < 0 ||
        add_type(module, &ss_sem_spec, &st->sem_type) < 0 ||
        add_type(module, &ss_channel_spec, &st->channel_type) < 0 ||
        add_type(module, &ss_mailbox_spec, &st->mailbox_type) < 0)
        return -1;

    if (PyModule_AddFunctions(module, ss_ipc_functions) < 0)
        return -1;
    if (ss_channel_module_init(module) < 0 || ss_mailbox_module_init(module) < 0)
        return -1;

#define ADD_INT(name, value) \
    if (PyModule_AddIntConstant(module, name, value) < 0) return -1
    ADD_INT("IPC_PRIVATE", IPC_PRIVATE);
    ADD_INT("IPC_CREAT", IPC_CREAT);
    ADD_INT("IPC_EXCL", IPC_EXCL);
    ADD_INT("IPC_NOWAIT", IPC_NOWAIT);
    ADD_INT("SEM_UNDO", SEM_UNDO);
    ADD_INT("SHM_RDONLY", SHM_RDONLY);
    ADD_INT("SHM_DEST", SHM_DEST);
    ADD_INT("SHM_LOCKED", SHM_LOCKED);
    ADD_INT("SEMVMX", SS_SEMVMX);
    ADD_INT("GETVAL", GETVAL);
    ADD_INT("SETVAL", SETVAL);
    ADD_INT("GETPID", GETPID);
    ADD_INT("GETNCNT", GETNCNT);
    ADD_INT("GETZCNT", GETZCNT);
    ADD_INT("IPC_RMID", IPC_RMID);
    ADD_INT("FRAME_HEADER_SIZE", 4);
#undef ADD_INT
    if (PyModule_AddStringConstant(module, "__version__", SHMSEM_VERSION) < 0)
        return -1;
    return 0;
}

static int
shmsem_traverse(PyObject *module, visitproc visit, void *arg)
{
    ss_state *st = ss_state_from_module(module);
    Py_VISIT(st->error_factory);
    Py_VISIT(st->queue_empty);
    Py_VISIT(st->queue_full);
    Py_VISIT(st->segment_type);
    Py_VISIT(st->pin_type);
    Py_VISIT(st->sem_type);
    Py_VISIT(st->channel_type);
    Py_VISIT(st->mailbox_type);
    return 0;
}

static int
shmsem_clear(PyObject *module)
{
    ss_state *st = ss_state_from_module(module);
    Py_CLEAR(st->error_factory);
    Py_CLEAR(st->queue_empty);
    Py_CLEAR(st->queue_full);
    Py_CLEAR(st->segment_type);
    Py_CLEAR(st->pin_type);
    Py_CLEAR(st->sem_type);
    Py_CLEAR(st->channel_type);
    Py_CLEAR(st->mailbox_type);
    return 0;
}

static void
shmsem_free(void *module)
{
    shmsem_clear((PyObject *)module);
}

static PyModuleDef_Slot shmsem_slots[] = {
    {Py_mod_exec, shmsem_exec},
    {0, NULL},
};

struct PyModuleDef shmsem_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmsem._core",
    .m_doc = "The C core of shmsem: System V IPC syscalls, GIL-free waits, futexes.",
    .m_size = sizeof(ss_state),
    .m_methods = module_methods,
    .m_slots = shmsem_slots,
    .m_traverse = shmsem_traverse,
    .m_clear = shmsem_clear,
    .m_free = shmsem_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&shmsem_module_def);
}
