/* Mailbox: a latest-value register in one shared memory segment.
 *
 * Two cells, each with its own seqlock counter.  A writer (under the writer
 * lock) fills the cell that is not current, then publishes it with one
 * atomic store of state = (seq << 1) | cell.  Readers take no lock and never
 * write: they read state, copy the current cell, and retry if its counter was
 * odd or moved.  A reader can only be disturbed by two publishes during its
 * copy; a writer killed midway leaves the *other* cell current and complete.
 */
#include "layout.h"

#include <sched.h>

typedef struct {
    PyObject_HEAD
    ss_state *state;
    SegmentObject *seg;
    uint64_t capacity;      /* private copies, validated at attach */
    uint64_t stride;
    ss_spin spin;
    PyObject *weakreflist;
} MailboxObject;

/* Start an operation on the mapped header (ss_object_enter); NULL with
 * ClosedError set when closed.  ss_object_leave ends it. */
static ss_mailbox_header *
mailbox_enter(MailboxObject *self, SegmentObject **segp)
{
    return (ss_mailbox_header *)ss_object_enter(self->state, self->seg, "mailbox is closed", segp);
}

static ss_mailbox_header *
mailbox_peek(MailboxObject *self)
{
    return (ss_mailbox_header *)ss_object_peek(self->state, self->seg, "mailbox is closed");
}

static inline ss_mailbox_cell *
cell_at(MailboxObject *self, ss_mailbox_header *h, unsigned i)
{
    return (ss_mailbox_cell *)((char *)h + SS_MAILBOX_HEADER_SIZE + (uint64_t)i * self->stride);
}

static PyObject *
mailbox_publish(MailboxObject *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    SegmentObject *seg = NULL;
    ss_mailbox_header *h = mailbox_enter(self, &seg);
    if (h == NULL)
        goto done;
    if ((uint64_t)view.len > self->capacity) {
        PyErr_Format(PyExc_ValueError, "value of %zd bytes exceeds the mailbox capacity of %llu",
                     view.len, (unsigned long long)self->capacity);
        goto done;
    }
    ss_lock_thread *me;
    int r = ss_plock_try(&h->writer_lock, &me);
    if (r == SS_LOCK_TIMEOUT) {
        ss_deadline forever = {1, 0};
        r = ss_plock_acquire(&h->writer_lock, &forever, seg, &me);
    }
    if (r == SS_LOCK_ERROR)
        goto done;
    uint64_t st = atomic_load_explicit(&h->state, memory_order_relaxed);
    uint64_t seq = (st >> 1) + 1;
    unsigned c = (unsigned)(st & 1) ^ 1u;
    ss_mailbox_cell *cell = cell_at(self, h, c);

    /* Odd while writing.  An odd counter left by a dead writer stays odd. */
    uint64_t s = atomic_load_explicit(&cell->lock_seq, memory_order_relaxed);
    uint64_t odd = s + 1 + (s & 1);
    atomic_store_explicit(&cell->lock_seq, odd, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&cell->seq, seq, memory_order_relaxed);
    atomic_store_explicit(&cell->length, (uint64_t)view.len, memory_order_relaxed);
    ss_copy(seg, (char *)cell + SS_MAILBOX_CELL_HEADER, view.buf, (size_t)view.len);
    atomic_store_explicit(&cell->lock_seq, odd + 1, memory_order_release);
    atomic_store_explicit(&h->state, (seq << 1) | c, memory_order_release);

    ss_plock_release(&h->writer_lock, me);
    ss_wake_waiters(&h->event, &h->waiting);
    result = PyLong_FromUnsignedLongLong(seq);
done:
    if (seg != NULL)
        ss_object_leave(seg);
    PyBuffer_Release(&view);
    return result;
}

/* Writers never write the current cell: only two publishes during a copy
 * disturb a reader, and each publish changes state.  A retry while state has
 * not changed for this long therefore means a corrupt segment or a foreign
 * writer that churns the current cell's counter. */
#define STUCK_STATE_NS 1000000000LL

/* Copy the current value.  Returns (seq, bytes).  The caller is inside an
 * operation on seg. */
static PyObject *
mailbox_read_value(MailboxObject *self, SegmentObject *seg, ss_mailbox_header *h)
{
    PyObject *buf = NULL;
    uint64_t retry_state = 0;
    int64_t retry_since = 0;    /* 0: the first attempt */
    for (unsigned attempt = 0;; attempt++) {
        if (attempt >= 16) {
            /* Being overtaken: let the writer finish, and let signals in. */
            if ((attempt & 63) == 0 && PyErr_CheckSignals() < 0)
                goto fail;
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
            if (ss_segment_addr(seg) == NULL)
                goto fail;
        }
        uint64_t st = atomic_load_explicit(&h->state, memory_order_acquire);
        if (attempt > 0) {
            int64_t now = ss_now_ns();
            if (retry_since == 0 || st != retry_state) {
                retry_state = st;
                retry_since = now;
            } else if (now - retry_since > STUCK_STATE_NS) {
                ss_raise_format(seg, "mailbox is corrupt: the current value has been marked "
                                     "as being written for over a second with no publish");
                goto fail;
            }
        }
        ss_mailbox_cell *cell = cell_at(self, h, (unsigned)(st & 1));
        uint64_t s1 = atomic_load_explicit(&cell->lock_seq, memory_order_acquire);
        if (s1 & 1)
            continue;
        uint64_t len = atomic_load_explicit(&cell->length, memory_order_relaxed);
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_relaxed);
        if (len > self->capacity) {
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&cell->lock_seq, memory_order_relaxed) == s1) {
                ss_raise_format(seg,
                                "mailbox is corrupt: value length %llu exceeds capacity %llu",
                                (unsigned long long)len, (unsigned long long)self->capacity);
                goto fail;
            }
            continue;
        }
        if (buf == NULL || PyBytes_GET_SIZE(buf) != (Py_ssize_t)len) {
            Py_XDECREF(buf);
            buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
            if (buf == NULL)
                return NULL;
        }
        ss_copy(seg, PyBytes_AS_STRING(buf), (char *)cell + SS_MAILBOX_CELL_HEADER, (size_t)len);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&cell->lock_seq, memory_order_relaxed) != s1)
            continue;
        return Py_BuildValue("(KN)", (unsigned long long)seq, buf);
    }
fail:
    Py_XDECREF(buf);
    return NULL;
}

static PyObject *
mailbox_read(MailboxObject *self, PyObject *unused)
{
    SegmentObject *seg;
    ss_mailbox_header *h = mailbox_enter(self, &seg);
    if (h == NULL)
        return NULL;
    PyObject *r = mailbox_read_value(self, seg, h);
    ss_object_leave(seg);
    return r;
}

typedef struct {
    ss_mailbox_header *h;
    uint64_t after;
} newer_ctx;

static int
has_newer(void *p)
{
    newer_ctx *c = p;
    return (atomic_load_explicit(&c->h->state, memory_order_acquire) >> 1) > c->after;
}

static PyObject *
mailbox_wait(MailboxObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"after_seq", "timeout", NULL};
    PyObject *a[2];
    if (ss_parse_args("wait", args, nargs, kwnames, names, 1, a) < 0)
        return NULL;
    if (!PyLong_Check(a[0])) {
        PyErr_Format(PyExc_TypeError, "after_seq must be an int, not %.100s",
                     Py_TYPE(a[0])->tp_name);
        return NULL;
    }
    unsigned long long after = PyLong_AsUnsignedLongLong(a[0]);
    if (after == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "after_seq must be in [0, 2**64), not %R", a[0]);
        return NULL;
    }
    ss_deadline dl;
    if (ss_parse_timeout(a[1], &dl) < 0)
        return NULL;
    SegmentObject *seg;
    ss_mailbox_header *h = mailbox_enter(self, &seg);
    if (h == NULL)
        return NULL;
    newer_ctx ctx = {h, after};
    PyObject *result = NULL;
    int w = ss_wait_until(seg, has_newer, &ctx, &h->event, &h->waiting, &dl, &self->spin);
    if (w == 0)
        result = Py_NewRef(Py_None);
    else if (w > 0 && ss_segment_addr(seg) != NULL)
        result = mailbox_read_value(self, seg, h);
    ss_object_leave(seg);
    return result;
}

static PyObject *
mailbox_get_seq(MailboxObject *self, void *closure)
{
    ss_mailbox_header *h = mailbox_peek(self);
    if (h == NULL)
        return NULL;
    return PyLong_FromUnsignedLongLong(atomic_load(&h->state) >> 1);
}

static PyObject *
mailbox_get_capacity(MailboxObject *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->capacity);
}

static PyObject *
mailbox_stats(MailboxObject *self, PyObject *unused)
{
    ss_mailbox_header *h = mailbox_peek(self);
    if (h == NULL)
        return NULL;
    uint64_t st = atomic_load(&h->state);
    return Py_BuildValue("{sKsKsIsIsIsK}", "capacity", (unsigned long long)self->capacity, "seq",
                         (unsigned long long)(st >> 1), "current_cell", (unsigned)(st & 1),
                         "waiting", (unsigned)atomic_load(&h->waiting), "writer_lock_pid",
                         (unsigned)ss_plock_holder(&h->writer_lock), "recoveries",
                         (unsigned long long)atomic_load(&h->writer_lock.recoveries));
}

static uint64_t
stride_for(uint64_t capacity)
{
    return SS_MAILBOX_CELL_HEADER + ((capacity + 63) & ~(uint64_t)63);
}

static const char *const attach_names[] = {"segment", "create", "capacity", NULL};

static PyObject *
mailbox_attach(MailboxObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3];
    if (ss_parse_args("_attach", args, nargs, kwnames, attach_names, 1, a) < 0)
        return NULL;
    int create = a[1] != NULL ? PyObject_IsTrue(a[1]) : 0;
    if (create < 0)
        return NULL;
    unsigned long long capacity = 0;
    if (a[2] != NULL) {
        capacity = PyLong_AsUnsignedLongLong(a[2]);
        if (capacity == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    char *base = ss_object_attach_check(self->state, a[0],
                                        self->seg != NULL || self->stride != 0, "Mailbox");
    if (base == NULL)
        return NULL;
    SegmentObject *seg = (SegmentObject *)a[0];
    ss_mailbox_header *h = (ss_mailbox_header *)base;
    if (create) {
        uint64_t stride = stride_for(capacity);
        if (capacity > (uint64_t)1 << 48 ||
            SS_MAILBOX_HEADER_SIZE + 2 * stride > (uint64_t)seg->size) {
            PyErr_Format(PyExc_ValueError, "segment of %zd bytes is too small for capacity %llu",
                         seg->size, capacity);
            return NULL;
        }
        memset(base, 0, SS_MAILBOX_HEADER_SIZE + 2 * SS_MAILBOX_CELL_HEADER);
        memset(base + SS_MAILBOX_HEADER_SIZE + stride, 0, SS_MAILBOX_CELL_HEADER);
        ss_object_init_header(base, SS_MAILBOX_MAGIC, SS_MAILBOX_HEADER_SIZE, capacity, stride);
    }
    int ready;
    if (ss_check_common(seg, SS_MAILBOX_MAGIC, SS_MAILBOX_HEADER_SIZE, "Mailbox", &ready) < 0)
        return NULL;
    if (!ready)
        Py_RETURN_FALSE;
    uint64_t cap = h->common.capacity, stride = h->common.cell_stride;
    if (h->common.header_size != SS_MAILBOX_HEADER_SIZE || (stride & 63) ||
        stride < SS_MAILBOX_CELL_HEADER || cap > stride - SS_MAILBOX_CELL_HEADER ||
        stride > ((uint64_t)seg->size - SS_MAILBOX_HEADER_SIZE) / 2)
        return ss_raise_format(seg,
                               "Mailbox header is corrupt: capacity %llu and cell stride %llu "
                               "do not fit the %zd-byte segment",
                               (unsigned long long)cap, (unsigned long long)stride, seg->size);
    self->seg = (SegmentObject *)Py_NewRef(seg);
    self->capacity = cap;
    self->stride = stride;
    Py_RETURN_TRUE;
}

static PyObject *
mailbox_detach_core(MailboxObject *self, PyObject *unused)
{
    SegmentObject *seg = self->seg;
    if (seg != NULL && seg->addr != NULL) {
        ss_mailbox_header *h = (ss_mailbox_header *)seg->addr;
        _Atomic uint32_t *const events[] = {&h->event};
        _Atomic uint32_t *const locks[] = {&h->writer_lock.word};
        ss_object_detach(seg, events, 1, locks, 1);
    }
    Py_CLEAR(self->seg);
    Py_RETURN_NONE;
}

static PyObject *
mailbox_segment_size(PyObject *module, PyObject *arg)
{
    unsigned long long cap = PyLong_AsUnsignedLongLong(arg);
    if (cap == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (cap > (uint64_t)1 << 48) {
        PyErr_Format(PyExc_ValueError, "capacity %llu is too large", cap);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(SS_MAILBOX_HEADER_SIZE + 2 * stride_for(cap));
}

static PyObject *
mailbox_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ss_state *st = ss_state_from_type(type);
    if (st == NULL)
        return NULL;
    MailboxObject *self = (MailboxObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->state = st;
    self->spin.spin_ns = SS_SPIN_START_NS;
    return (PyObject *)self;
}

static int
mailbox_traverse(MailboxObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->seg);
    return 0;
}

static int
mailbox_clear(MailboxObject *self)
{
    Py_CLEAR(self->seg);
    return 0;
}

static void
mailbox_dealloc(MailboxObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    mailbox_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef mailbox_methods[] = {
    {"publish", (PyCFunction)mailbox_publish, METH_O,
     "publish($self, data, /)\n--\n\n"
     "Replace the value; return its sequence number (1, 2, ...).  Writers\n"
     "exclude each other; readers are never blocked."},
    {"read", (PyCFunction)mailbox_read, METH_NOARGS,
     "read($self, /)\n--\n\nThe latest value as (seq, bytes); (0, b'') before any publish."},
    {"wait", (PyCFunction)(void (*)(void))mailbox_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait($self, /, after_seq, timeout=None)\n--\n\n"
     "Wait for a value newer than after_seq and return it as (seq, bytes), or\n"
     "None if the timeout expires."},
    {"_stats", (PyCFunction)mailbox_stats, METH_NOARGS,
     "_stats($self, /)\n--\n\nCounters from the header, as a dict."},
    {"_attach", (PyCFunction)(void (*)(void))mailbox_attach, METH_FASTCALL | METH_KEYWORDS,
     "_attach($self, /, segment, create=False, capacity=0)\n--\n\n"
     "Bind to a segment, initialising it when create is true.  Returns False\n"
     "if the header is not initialised yet."},
    {"_detach_core", (PyCFunction)mailbox_detach_core, METH_NOARGS,
     "_detach_core($self, /)\n--\n\nDrop the reference to the segment."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mailbox_getset[] = {
    {"seq", (getter)mailbox_get_seq, NULL, "sequence number of the latest value", NULL},
    {"capacity", (getter)mailbox_get_capacity, NULL, "largest value in bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef mailbox_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(MailboxObject, weakreflist), READONLY},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot mailbox_slots[] = {
    {Py_tp_new, mailbox_new},
    {Py_tp_dealloc, mailbox_dealloc},
    {Py_tp_traverse, mailbox_traverse},
    {Py_tp_clear, mailbox_clear},
    {Py_tp_methods, mailbox_methods},
    {Py_tp_getset, mailbox_getset},
    {Py_tp_members, mailbox_members},
    {Py_tp_doc, "Base of shmsem.Mailbox: the seqlocked cells in C."},
    {0, NULL},
};

PyType_Spec ss_mailbox_spec = {
    .name = "shmsem._core.MailboxBase",
    .basicsize = sizeof(MailboxObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = mailbox_slots,
};

static PyMethodDef mailbox_functions[] = {
    {"mailbox_segment_size", mailbox_segment_size, METH_O,
     "mailbox_segment_size(capacity, /)\n--\n\nSegment bytes needed for a Mailbox."},
    {NULL, NULL, 0, NULL},
};

int
ss_mailbox_module_init(PyObject *module)
{
    PyObject *magic = PyLong_FromUnsignedLongLong(SS_MAILBOX_MAGIC);
    if (magic == NULL)
        return -1;
    if (PyModule_AddObject(module, "MAILBOX_MAGIC", magic) < 0) {
        Py_DECREF(magic);
        return -1;
    }
    if (PyModule_AddFunctions(module, mailbox_functions) < 0 ||
        PyModule_AddIntConstant(module, "MAILBOX_HEADER_SIZE", SS_MAILBOX_HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "MAILBOX_CELL_HEADER_SIZE", SS_MAILBOX_CELL_HEADER) < 0)
        return -1;
    PyObject *mb = PyDict_New();
    if (mb == NULL ||
        ss_add_offset(mb, "writer_lock", offsetof(ss_mailbox_header, writer_lock)) ||
        ss_add_offset(mb, "state", offsetof(ss_mailbox_header, state)) ||
        ss_add_offset(mb, "event", offsetof(ss_mailbox_header, event)) ||
        ss_add_offset(mb, "waiting", offsetof(ss_mailbox_header, waiting)) ||
        PyModule_AddObject(module, "MAILBOX_OFFSETS", mb) < 0) {
        Py_XDECREF(mb);
        return -1;
    }
    return 0;
}
