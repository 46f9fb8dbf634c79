/* What Channel and Mailbox share: an object that keeps one segment until it
 * is closed, with a header of its own that this file checks at attach. */
#include "layout.h"

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

