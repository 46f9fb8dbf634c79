/* Segment: one shmat() mapping of a System V shared memory segment.
 *
 * Safety rules, in order of importance:
 *  - addr is NULL once detached, and every access checks it first;
 *  - detach() refuses while buffer views are exported (exports > 0) or while
 *    another thread is copying with the GIL released (busy > 0);
 *  - lengths read from shared memory are read once into a local, checked
 *    against the size of *this* mapping, and only then used, so a hostile
 *    writer changing them concurrently cannot make us read out of bounds.
 */
#include "shmsem.h"

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
    if (n < SS_NOGIL_COPY_THRESHOLD) {
        memcpy(dst, src, n);
        return;
    }
    seg->busy++;
    Py_BEGIN_ALLOW_THREADS
    memcpy(dst, src, n);
    Py_END_ALLOW_THREADS
    seg->busy--;
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

    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) < 0)
        return ss_raise_errno(st, "shmctl(IPC_STAT)", NULL, shmid);
    if (ds.shm_segsz > (size_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_OverflowError, "segment is larger than this process can map");
        return NULL;
    }

    void *addr = shmat(shmid, NULL, readonly ? SHM_RDONLY : 0);
    if (addr == (void *)-1)
        return ss_raise_errno(st, "shmat", NULL, shmid);

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
/* Buffer protocol. */

static int
segment_getbuffer(SegmentObject *self, Py_buffer *view, int flags)
{
    if (self->addr == NULL) {
        view->obj = NULL;
        ss_segment_raise(self, "closed", "shared memory segment is detached");
        return -1;
    }
    if ((flags & PyBUF_WRITABLE) && self->readonly) {
        view->obj = NULL;
        PyErr_SetString(PyExc_BufferError,
                        "segment is attached read-only; a writable view is not available");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->size, self->readonly,
                          flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void
segment_releasebuffer(SegmentObject *self, Py_buffer *view)
{
    self->exports--;
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
                     "cannot detach segment id=%d: %zd exported view(s) (memoryview or "
                     "ndarray) are still alive; release them first",
                     self->shmid, self->exports);
        return NULL;
    }
    if (self->busy > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot detach segment id=%d: another thread is using it", self->shmid);
        return NULL;
    }
    void *addr = self->addr;
    self->addr = NULL;
    if (shmdt(addr) < 0)
        return ss_raise_errno(self->state, "shmdt", NULL, self->shmid);
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
    Py_ssize_t offset = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (ss_segment_addr(self) == NULL || check_range(self, offset, n) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    ss_copy(self, PyBytes_AS_STRING(out), self->addr + offset, (size_t)n);
    return out;
}

static PyObject *
segment_write_at(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!ss_check_nargs("write_at", nargs, 2, 2))
        return NULL;
    Py_ssize_t offset = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    if (check_writable(self) < 0)
        return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    if (check_range(self, offset, data.len) == 0) {
        ss_copy(self, self->addr + offset, data.buf, (size_t)data.len);
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
    if (out == NULL)
        return NULL;
    ss_copy(self, PyBytes_AS_STRING(out), self->addr + 4, (size_t)len);
    return out;
}

static PyObject *
segment_write_frame(SegmentObject *self, PyObject *arg)
{
    if (check_writable(self) < 0)
        return NULL;
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
    if (len > self->size - 4 || len > INT32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "frame payload of %zd bytes does not fit segment id=%d of %zd bytes "
                     "(at most %zd after the 4-byte header)",
                     len, self->shmid, self->size, self->size > 4 ? self->size - 4 : 0);
    } else {
        ss_copy(self, self->addr + 4, buf, (size_t)len);
        int32_t hdr = (int32_t)len;
        /* Payload first, then the length, so a reader polling the header never
         * sees a new length over old bytes on this (TSO) machine. */
        atomic_thread_fence(memory_order_release);
        memcpy(self->addr, &hdr, sizeof hdr);
        result = PyLong_FromSsize_t(len);
    }
    if (have_view)
        PyBuffer_Release(&view);
    return result;
}

static PyObject *
segment_get_attached(SegmentObject *self, void *closure)
{
    return PyBool_FromLong(self->addr != NULL);
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
    {"exports", (getter)segment_get_exports, NULL, "number of live buffer views", NULL},
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
    {Py_bf_releasebuffer, segment_releasebuffer},
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
