/* System V shared memory: the Segment type (one shmat() mapping, exported
 * through the buffer protocol with its pins) and the module functions over
 * shmget/shmctl.
 *
 * Safety rules, in order of importance:
 *  - addr is NULL once unmapped, and every access checks it first;
 *  - detach() refuses while views exist (exports > 0);
 *  - an operation that may release the GIL or run Python code holds `busy`
 *    from start to end; detach() during one only marks the segment closing,
 *    and the last operation to leave unmaps it, so no operation ever finds
 *    its memory gone under it;
 *  - lengths read from shared memory are read once into a local, checked
 *    against the size of *this* mapping, and only then used, so a hostile
 *    writer changing them concurrently cannot make us read out of bounds.
 */
#include "shmsem.h"

#include <stdio.h>

PyObject *
ss_segment_raise(SegmentObject *seg, const char *kind, const char *detail)
{
    PyObject *key = PyLong_FromLong(seg->key);
    if (key == NULL)
        return NULL;
    ss_raise(seg->state, kind, 0, NULL, key, seg->shmid, detail);
    Py_DECREF(key);
    return NULL;
}

void
ss_copy(SegmentObject *seg, void *dst, const void *src, size_t n)
{
    /* memmove: a caller may copy from a view of this very segment. */
    if (n < SS_NOGIL_COPY_THRESHOLD) {
        memmove(dst, src, n);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    memmove(dst, src, n);
    Py_END_ALLOW_THREADS
}

static void
segment_unmap(SegmentObject *seg)
{
    void *addr = seg->addr;
    seg->addr = NULL;
    seg->closing = 0;
    shmdt(addr); /* cannot fail for an address shmat returned */
}

void
ss_segment_leave(SegmentObject *seg)
{
    if (--seg->busy == 0 && seg->closing && seg->exports == 0 && seg->addr != NULL)
        segment_unmap(seg);
}

static PyObject *
segment_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"shmid", "readonly", NULL};
    int shmid, readonly = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|p:Segment", kwlist, &shmid, &readonly))
        return NULL;
    ss_state *st = ss_state_from_type(type);
    if (st == NULL)
        return NULL;
    if (shmid < 0) {
        PyErr_Format(PyExc_ValueError, "shmid must be non-negative, not %d", shmid);
        return NULL;
    }

    /* Attach first, then read the size.  The other order is a race: if the
     * segment were removed and its id reused by a smaller one between the
     * IPC_STAT and the shmat, every bounds check would use the old, larger
     * size against the new mapping.  Once attached, the segment cannot go
     * away (IPC_RMID only marks it) and its id cannot be reused, so the
     * IPC_STAT that follows describes exactly what we mapped. */
    void *addr = shmat(shmid, NULL, readonly ? SHM_RDONLY : 0);
    if (addr == (void *)-1)
        return ss_raise_errno(st, "shmat", NULL, shmid);
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) < 0) {
        ss_raise_errno(st, "shmctl(IPC_STAT)", NULL, shmid);
        shmdt(addr);
        return NULL;
    }
    if (ds.shm_segsz > (size_t)PY_SSIZE_T_MAX) { /* cannot be mapped, but be safe */
        shmdt(addr);
        PyErr_SetString(PyExc_OverflowError, "segment is larger than this process can map");
        return NULL;
    }

    SegmentObject *self = (SegmentObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        shmdt(addr);
        return NULL;
    }
    self->state = st;
    self->addr = addr;
    self->size = (Py_ssize_t)ds.shm_segsz;
    self->shmid = shmid;
    self->key = (int)SS_PERM_KEY(ds.shm_perm);
    self->readonly = readonly;
    return (PyObject *)self;
}

static void
segment_dealloc(SegmentObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    /* No view can be alive here: every view holds a reference to us. */
    if (self->addr != NULL) {
        shmdt(self->addr);
        self->addr = NULL;
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
segment_traverse(SegmentObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Buffer protocol.
 *
 * Every export is backed by its own small "pin" object, which becomes the
 * Py_buffer's obj and keeps the mapping alive for as long as it lives, not
 * just until the buffer is released.  This matters because some consumers
 * release the buffer at once and keep only a reference to its obj: NumPy's
 * ndarray(buffer=memoryview) does exactly that.  With the pin as obj, such an
 * array still holds the mapping, and detach() refuses while it exists. */

typedef struct {
    PyObject_HEAD
    SegmentObject *seg;
} PinObject;

/* Pins are made only by segment_getbuffer, so seg is never NULL; the checks
 * below are for a pin built some other way (see SS_TPFLAGS_NO_NEW). */
static void
pin_dealloc(PinObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->seg != NULL) {
        self->seg->exports--;
        Py_DECREF(self->seg);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int
pin_getbuffer(PinObject *self, Py_buffer *view, int flags)
{
    /* Only reached if someone asks the pin itself for a buffer again. */
    SegmentObject *seg = self->seg;
    view->obj = NULL;
    if (seg == NULL) {
        PyErr_SetString(PyExc_BufferError, "this segment pin belongs to no segment");
        return -1;
    }
    if (seg->addr == NULL) { /* cannot happen while this pin lives; be safe */
        ss_segment_raise(seg, "closed", "shared memory segment is detached");
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)self, seg->addr, seg->size, seg->readonly, flags);
}

static PyType_Slot pin_slots[] = {
    SS_SLOT_NO_NEW
    {Py_tp_dealloc, pin_dealloc},
    {Py_bf_getbuffer, pin_getbuffer},
    {Py_tp_doc, "Keeps a segment mapped while a view of it exists."},
    {0, NULL},
};

PyType_Spec ss_pin_spec = {
    .name = "shmsem._core.SegmentPin",
    .basicsize = sizeof(PinObject),
    .flags = Py_TPFLAGS_DEFAULT | SS_TPFLAGS_NO_NEW,
    .slots = pin_slots,
};

static int
segment_getbuffer(SegmentObject *self, Py_buffer *view, int flags)
{
    view->obj = NULL;
    if (ss_segment_addr(self) == NULL)
        return -1;
    if ((flags & PyBUF_WRITABLE) && self->readonly) {
        PyErr_SetString(PyExc_BufferError,
                        "segment is attached read-only; a writable view is not available");
        return -1;
    }
    PinObject *pin = PyObject_New(PinObject, self->state->pin_type);
    if (pin == NULL)
        return -1;
    pin->seg = (SegmentObject *)Py_NewRef(self);
    self->exports++;
    int rc = PyBuffer_FillInfo(view, (PyObject *)pin, self->addr, self->size, self->readonly,
                               flags);
    Py_DECREF(pin); /* the view holds it now (or it is freed on failure) */
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Methods. */

static PyObject *
segment_detach(SegmentObject *self, PyObject *unused)
{
    if (self->addr == NULL)
        Py_RETURN_NONE;
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot detach segment id=%d: %zd view(s) of it (memoryview or "
                     "ndarray) are still alive; delete or release them first",
                     self->shmid, self->exports);
        return NULL;
    }
    if (self->busy > 0) {
        /* An operation is in progress (another thread copying or waiting, or
         * the caller itself, from a signal handler).  It sees `closing` and
         * stops; the last one out unmaps. */
        self->closing = 1;
        Py_RETURN_NONE;
    }
    segment_unmap(self);
    Py_RETURN_NONE;
}

static int
check_writable(SegmentObject *self)
{
    if (ss_segment_addr(self) == NULL)
        return -1;
    if (self->readonly) {
        ss_segment_raise(self, "readonly",
                         "segment is attached read-only; open it without readonly=True to write");
        return -1;
    }
    return 0;
}

/* Bounds check without overflow: 0 <= offset, 0 <= n, offset + n <= size. */
static int
check_range(SegmentObject *self, Py_ssize_t offset, Py_ssize_t n)
{
    if (offset < 0 || n < 0 || offset > self->size || n > self->size - offset) {
        PyErr_Format(PyExc_ValueError,
                     "range [%zd, %zd + %zd) is outside the segment of %zd bytes",
                     offset, offset, n, self->size);
        return -1;
    }
    return 0;
}

static PyObject *
segment_read_at(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!ss_check_nargs("read_at", nargs, 2, 2))
        return NULL;
    /* NULL: out-of-range ints clamp, and then fail the bounds check below
     * with ValueError like any other out-of-range value. */
    Py_ssize_t offset = PyNumber_AsSsize_t(args[0], NULL);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyNumber_AsSsize_t(args[1], NULL);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (ss_segment_addr(self) == NULL || check_range(self, offset, n) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL || ss_segment_enter(self) == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    ss_copy(self, PyBytes_AS_STRING(out), self->addr + offset, (size_t)n);
    ss_segment_leave(self);
    return out;
}

static PyObject *
segment_write_at(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!ss_check_nargs("write_at", nargs, 2, 2))
        return NULL;
    Py_ssize_t offset = PyNumber_AsSsize_t(args[0], NULL);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    /* Buffer first: getting it may run Python code (__buffer__) that detaches. */
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    if (check_writable(self) == 0 && check_range(self, offset, data.len) == 0 &&
        ss_segment_enter(self) != NULL) {
        ss_copy(self, self->addr + offset, data.buf, (size_t)data.len);
        ss_segment_leave(self);
        result = PyLong_FromSsize_t(data.len);
    }
    PyBuffer_Release(&data);
    return result;
}

/* Frames in the .NET helper's format: int32 little-endian length, then bytes. */

static PyObject *
segment_read_frame(SegmentObject *self, PyObject *unused)
{
    if (ss_segment_addr(self) == NULL)
        return NULL;
    if (self->size < 4)
        return ss_segment_raise(self, "frame", "segment is smaller than the 4-byte frame header");
    int32_t len;
    memcpy(&len, self->addr, sizeof len);  /* read once; never re-read */
    if (len < 0 || (Py_ssize_t)len > self->size - 4) {
        char detail[160];
        snprintf(detail, sizeof detail,
                 "corrupt frame header: length %d does not fit the %zd payload bytes "
                 "of this segment",
                 (int)len, self->size - 4);
        return ss_segment_raise(self, "frame", detail);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, len);
    if (out == NULL || ss_segment_enter(self) == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    ss_copy(self, PyBytes_AS_STRING(out), self->addr + 4, (size_t)len);
    ss_segment_leave(self);
    return out;
}

static PyObject *
segment_write_frame(SegmentObject *self, PyObject *arg)
{
    const char *buf;
    Py_ssize_t len;
    Py_buffer view = {0};
    int have_view = 0;
    if (PyUnicode_Check(arg)) {
        buf = PyUnicode_AsUTF8AndSize(arg, &len);
        if (buf == NULL)
            return NULL;
    } else {
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        have_view = 1;
        buf = view.buf;
        len = view.len;
    }
    PyObject *result = NULL;
    /* Checked after getting the buffer, which may run Python code. */
    if (check_writable(self) < 0)
        goto done;
    if (len > self->size - 4 || len > INT32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "frame payload of %zd bytes does not fit segment id=%d of %zd bytes "
                     "(at most %zd after the 4-byte header)",
                     len, self->shmid, self->size, self->size > 4 ? self->size - 4 : 0);
    } else if (ss_segment_enter(self) != NULL) {
        ss_copy(self, self->addr + 4, buf, (size_t)len);
        int32_t hdr = (int32_t)len;
        /* Payload first, then the length with a release store (the header is
         * 4-aligned: the segment is page-aligned), so that a reader that
         * loads the length with acquire order never sees a new length over
         * old bytes, on any architecture.  (On x86 every store is a release
         * store, which is what the .NET helper's plain reads rely on.) */
        __atomic_store_n((int32_t *)(void *)self->addr, hdr, __ATOMIC_RELEASE);
        ss_segment_leave(self);
        result = PyLong_FromSsize_t(len);
    }
done:
    if (have_view)
        PyBuffer_Release(&view);
    return result;
}

static PyObject *
segment_get_attached(SegmentObject *self, void *closure)
{
    return PyBool_FromLong(self->addr != NULL && !self->closing);
}

static PyObject *
segment_get_exports(SegmentObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->exports);
}

static PyObject *
segment_get_address(SegmentObject *self, void *closure)
{
    if (ss_segment_addr(self) == NULL)
        return NULL;
    return PyLong_FromVoidPtr(self->addr);
}

static PyMethodDef segment_methods[] = {
    {"detach", (PyCFunction)segment_detach, METH_NOARGS,
     "detach($self)\n--\n\n"
     "Unmap this process's view (shmdt).  Raises BufferError while exported views\n"
     "are alive.  Idempotent."},
    {"read_at", (PyCFunction)(void (*)(void))segment_read_at, METH_FASTCALL,
     "read_at($self, offset, n, /)\n--\n\nCopy n bytes at offset out of the segment (bounds-checked)."},
    {"write_at", (PyCFunction)(void (*)(void))segment_write_at, METH_FASTCALL,
     "write_at($self, offset, data, /)\n--\n\nCopy data into the segment at offset (bounds-checked)."},
    {"read_frame", (PyCFunction)segment_read_frame, METH_NOARGS,
     "read_frame($self)\n--\n\nRead the frame at offset 0: int32 LE length, then payload."},
    {"write_frame", (PyCFunction)segment_write_frame, METH_O,
     "write_frame($self, data, /)\n--\n\nWrite data (bytes-like, or str as UTF-8) as one frame."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef segment_members[] = {
    {"size", T_PYSSIZET, offsetof(SegmentObject, size), READONLY, "size in bytes"},
    {"shmid", T_INT, offsetof(SegmentObject, shmid), READONLY, "segment id"},
    {"readonly", T_BOOL, offsetof(SegmentObject, readonly), READONLY,
     "attached with SHM_RDONLY"},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(SegmentObject, weakreflist), READONLY},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef segment_getset[] = {
    {"attached", (getter)segment_get_attached, NULL, "False once detached", NULL},
    {"exports", (getter)segment_get_exports, NULL,
     "number of live views (each keeps the mapping until it is freed)", NULL},
    {"address", (getter)segment_get_address, NULL, "mapping address (diagnostics)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot segment_slots[] = {
    {Py_tp_new, segment_new},
    {Py_tp_dealloc, segment_dealloc},
    {Py_tp_traverse, segment_traverse},
    {Py_tp_methods, segment_methods},
    {Py_tp_members, segment_members},
    {Py_tp_getset, segment_getset},
    {Py_bf_getbuffer, segment_getbuffer},
    {Py_tp_doc,
     "Segment(shmid, readonly=False)\n--\n\n"
     "One attachment (shmat) of a System V shared memory segment, exported\n"
     "through the buffer protocol.  Use shmsem.SharedMemory instead."},
    {0, NULL},
};

PyType_Spec ss_segment_spec = {
    .name = "shmsem._core.Segment",
    .basicsize = sizeof(SegmentObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = segment_slots,
};

/* ------------------------------------------------------------------------ */
/* Module functions over shmget/shmctl. */

static PyObject *
ipc_shmget(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    key_t key;
    Py_ssize_t size;
    int flags;
    if (!ss_check_nargs("shmget", nargs, 3, 3) || ss_parse_key(args[0], &key) < 0 ||
        ss_arg_size(args[1], "size", &size) < 0 || ss_arg_int(args[2], "flags", &flags) < 0)
        return NULL;
    int id = shmget(key, (size_t)size, flags);
    if (id < 0) {
        return ss_raise_for_key(st, errno, "shmget", key);
    }
    return PyLong_FromLong(id);
}

static PyObject *
ipc_shm_stat(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    int id;
    if (!ss_check_nargs("shm_stat", nargs, 1, 2) || ss_arg_id(args[0], "shmid", &id) < 0)
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
    if (!ss_check_nargs("shm_rmid", nargs, 1, 2) || ss_arg_id(args[0], "shmid", &id) < 0)
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
    if (!ss_check_nargs("shm_set_mode", nargs, 2, 3) || ss_arg_id(args[0], "shmid", &id) < 0 ||
        ss_arg_int(args[1], "mode", &mode) < 0)
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


PyMethodDef ss_shm_functions[] = {
    {"shmget", (PyCFunction)(void (*)(void))ipc_shmget, METH_FASTCALL,
     "shmget(key, size, flags, /)\n--\n\nshmget(2); returns the segment id."},
    {"shm_stat", (PyCFunction)(void (*)(void))ipc_shm_stat, METH_FASTCALL,
     "shm_stat(shmid, key=None, /)\n--\n\nshmctl(IPC_STAT) as (key, uid, gid, cuid, cgid, mode, size,\n"
     "atime, dtime, ctime, cpid, lpid, nattch)."},
    {"shm_rmid", (PyCFunction)(void (*)(void))ipc_shm_rmid, METH_FASTCALL, "shm_rmid(shmid, key=None, /)\n--\n\nshmctl(IPC_RMID)."},
    {"shm_set_mode", (PyCFunction)(void (*)(void))ipc_shm_set_mode, METH_FASTCALL,
     "shm_set_mode(shmid, mode, key=None, /)\n--\n\nshmctl(IPC_SET) of the permission bits."},
    {NULL, NULL, 0, NULL},
};
