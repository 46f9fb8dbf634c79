/* What Channel and Mailbox share: an object that keeps one segment until it
 * is closed, with a header of its own: the checks at attach, the writing of
 * the common header, the header checks of docs/protocol.md section 1, and
 * the detach that wakes every sleeper. */
#include "layout.h"

#include <unistd.h>

char *
ss_object_enter(ss_state *st, SegmentObject *seg, const char *closed_msg, SegmentObject **segp)
{
    if (seg == NULL) {
        ss_raise_closed(st, closed_msg);
        return NULL;
    }
    char *base = ss_segment_enter(seg);
    if (base == NULL)
        return NULL;
    Py_INCREF(seg);
    *segp = seg;
    return base;
}

void
ss_object_leave(SegmentObject *seg)
{
    ss_segment_leave(seg);
    Py_DECREF(seg);
}

char *
ss_object_peek(ss_state *st, SegmentObject *seg, const char *closed_msg)
{
    if (seg == NULL) {
        ss_raise_closed(st, closed_msg);
        return NULL;
    }
    return ss_segment_addr(seg);
}


int
ss_check_common(SegmentObject *seg, uint64_t magic, size_t header_size, const char *what,
                int *ready_out)
{
    char *base = ss_segment_addr(seg);
    if (base == NULL)
        return -1;
    *ready_out = 0;
    if ((size_t)seg->size < header_size)
        return ss_raise_format(seg,
                               "segment of %zd bytes is too small to hold a %s", seg->size,
                               what),
               -1;
    ss_common_header *c = (ss_common_header *)base;
    uint64_t m = atomic_load_explicit(&c->magic, memory_order_acquire);
    if (m == 0)
        return 0; /* the creator has not finished initialising */
    if (m != magic)
        return ss_raise_format(seg, "segment is not a shmsem %s (bad magic)",
                               what),
               -1;
    if (c->version != SS_LAYOUT_VERSION)
        return ss_raise_format(seg,
                               "%s layout version %u is not supported (this is %d)", what,
                               c->version, SS_LAYOUT_VERSION),
               -1;
    *ready_out = 1;
    return 0;
}

/* The checks every _attach(segment, create, ...) makes before it looks at
 * the header: a Segment, attached writable (the locks live in it), and a
 * handle that has never attached (another thread's operation may still use
 * the private copies of a detached mapping).  Returns the mapping, or NULL
 * with an exception set. */
char *
ss_object_attach_check(ss_state *st, PyObject *segobj, int attached_before, const char *what)
{
    if (!PyObject_TypeCheck(segobj, st->segment_type)) {
        PyErr_SetString(PyExc_TypeError, "segment must be a shmsem._core.Segment");
        return NULL;
    }
    if (attached_before) {
        PyErr_Format(PyExc_RuntimeError, "a %s object attaches once", what);
        return NULL;
    }
    SegmentObject *seg = (SegmentObject *)segobj;
    char *base = ss_segment_addr(seg);
    if (base == NULL)
        return NULL;
    if (seg->readonly) {
        char msg[128];
        snprintf(msg, sizeof msg, "a %s needs a writable attach (its locks live in the segment)",
                 what);
        ss_segment_raise(seg, "readonly", msg);
        return NULL;
    }
    return base;
}

/* Write the common header of a segment this process just created (it is
 * zero-filled and nobody trusts it yet): every field, then the magic with
 * release order, last. */
void
ss_object_init_header(char *base, uint64_t magic, uint32_t header_size, uint64_t capacity,
                      uint64_t cell_stride)
{
    ss_common_header *c = (ss_common_header *)base;
    c->version = SS_LAYOUT_VERSION;
    c->header_size = header_size;
    c->capacity = capacity;
    c->cell_stride = cell_stride;
    c->creator_pid = (uint32_t)getpid();
    atomic_store_explicit(&c->magic, magic, memory_order_release);
}

/* The detach of close(): when operations of ours are in progress, mark the
 * segment closing (the last one to leave unmaps it) and wake every sleeper
 * on the object's futex words, so that ours see it at once.  Other
 * processes' sleepers wake spuriously, find nothing changed, and sleep
 * again.  events are bumped before the wake (a sleeper compares them);
 * lock words are only woken. */
void
ss_object_detach(SegmentObject *seg, _Atomic uint32_t *const *events, int nevents,
                 _Atomic uint32_t *const *lock_words, int nlocks)
{
    if (seg == NULL || seg->addr == NULL || seg->busy == 0 || seg->exports != 0)
        return;
    seg->closing = 1;
    for (int i = 0; i < nevents; i++) {
        atomic_fetch_add(events[i], 1);
        ss_futex_wake(events[i], INT32_MAX);
    }
    for (int i = 0; i < nlocks; i++)
        ss_futex_wake(lock_words[i], INT32_MAX);
}
