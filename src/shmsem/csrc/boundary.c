/* The C/Python boundary: every error leaves C through the factory that
 * shmsem/errors.py registers; arguments, timeouts and keys are parsed here,
 * once, for every other file. */
#include "shmsem.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

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
/* Arguments of the System V functions. */

int
ss_arg_int(PyObject *obj, const char *what, int *out)
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

int
ss_arg_id(PyObject *obj, const char *what, int *out)
{
    if (ss_arg_int(obj, what, out) < 0)
        return -1;
    if (*out < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be non-negative, not %d", what, *out);
        return -1;
    }
    return 0;
}

int
ss_arg_size(PyObject *obj, const char *what, Py_ssize_t *out)
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

PyObject *
ss_key_object(key_t key)
{
    return PyLong_FromLong((long)key);
}

/* Raise for a failed shmget/semget/msgget, naming the key.  err is read by
 * the caller before anything here can change errno. */
PyObject *
ss_raise_for_key(ss_state *st, int err, const char *syscall, key_t key)
{
    PyObject *k = ss_key_object(key);
    if (k == NULL)
        return NULL;
    ss_raise(st, "os", err, syscall, k, -1, NULL);
    Py_DECREF(k);
    return NULL;
}


/* ------------------------------------------------------------------------ */
/* Module functions of the boundary itself. */

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

PyMethodDef ss_boundary_functions[] = {
    {"_set_error_factory", set_error_factory, METH_O,
     "_set_error_factory(factory, /)\n--\n\n"
     "Register the callable that turns (kind, errno, syscall, key, id, detail)\n"
     "into an exception.  Called once by shmsem.errors at import."},
    {"monotonic_ns", monotonic_ns, METH_NOARGS,
     "monotonic_ns()\n--\n\nCLOCK_MONOTONIC in nanoseconds, the clock every timeout uses."},
    {NULL, NULL, 0, NULL},
};

