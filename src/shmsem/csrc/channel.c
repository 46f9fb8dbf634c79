/* Channel: a multi-producer, multi-consumer FIFO of variable-size messages
 * in one shared memory segment.  Layout and ordering rules: layout.h and
 * docs/protocol.md.
 *
 * Producers serialise on the producer lock, consumers on the consumer lock;
 * between the two sides the ring is a single-producer single-consumer queue
 * synchronised by the release store of tail (producers) and head
 * (consumers).  A message becomes visible only when tail moves past it, so a
 * producer killed mid-copy leaves nothing behind; a consumer killed mid-copy
 * has not moved head, so the message stays for the next consumer.  Both locks
 * are robust futexes, which the kernel frees when their holder dies (plock.c).
 *
 * Rules that keep this safe against a hostile or crashed peer:
 *  - the capacity used for every bound is this handle's private copy, checked
 *    against the segment size at attach time, never re-read;
 *  - head, tail and each record length are read once, validated against the
 *    capacity, and only then used; a violation raises FormatError;
 *  - nothing runs Python code while a lock is held (only bytes/bytearray are
 *    allocated, and they are not tracked by the garbage collector), so a
 *    finalizer can never re-enter a lock its own thread holds.
 */
#include "layout.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>

/* ------------------------------------------------------------------------ */
/* The Channel object. */

typedef struct {
    PyObject_HEAD
    ss_state *state;
    SegmentObject *seg;         /* NULL until _attach */
    uint64_t capacity;          /* private copy, validated at attach */
    uint64_t cached_head;       /* lower bounds of the other side's counter */
    uint64_t cached_tail;
    ss_spin spin_get;
    ss_spin spin_put;
    PyObject *weakreflist;
} ChannelObject;

#define MAX_PAYLOAD(self) ((self)->capacity - SS_RECORD_HEADER)

static inline uint64_t
record_size(uint64_t payload)
{
    return SS_RECORD_HEADER + ((payload + 7) & ~(uint64_t)7);
}

/* Start an operation on the mapped header (ss_object_enter); NULL with
 * ClosedError set when closed.  ss_object_leave ends it. */
static ss_channel_header *
channel_enter(ChannelObject *self, SegmentObject **segp)
{
    return (ss_channel_header *)ss_object_enter(self->state, self->seg, "channel is closed", segp);
}

static inline char *
ring_of(ss_channel_header *h)
{
    return (char *)h + SS_CHANNEL_HEADER_SIZE;
}

/* The producer copies with the GIL released as a whole when the records
 * together are large (see write_batch), so this one never releases it, and
 * it takes the capacity, not the object: it may run without the GIL. */
static void
ring_write(uint64_t cap, char *ring, uint64_t pos, const void *src, uint64_t n)
{
    uint64_t p = pos % cap;
    uint64_t first = cap - p;
    if (first > n)
        first = n;
    /* memmove: src may be a view of this very segment. */
    memmove(ring + p, src, first);
    if (n > first)
        memmove(ring, (const char *)src + first, n - first);
}

static void
ring_read(ChannelObject *self, SegmentObject *seg, const char *ring, uint64_t pos, void *dst,
          uint64_t n)
{
    uint64_t p = pos % self->capacity;
    uint64_t first = self->capacity - p;
    if (first > n)
        first = n;
    ss_copy(seg, dst, ring + p, first);
    if (n > first)
        ss_copy(seg, (char *)dst + first, ring, n - first);
}

/* Records of at least this size are moved to the start of an empty ring
 * (see channel_put); smaller ones stay in cache wherever they are. */
#define REWIND_MIN_BYTES (64 * 1024)

/* Every call, a non-blocking one or one with a zero or tiny timeout
 * included, waits at least this long for a lock: a peer holds it only while
 * copying, so "locked" must not be reported as "full" or "empty". */
#define NOWAIT_LOCK_NS 50000000LL

static int
lock_side(ChannelObject *self, SegmentObject *seg, ss_plock *lk, int blocking,
          const ss_deadline *dl, ss_lock_thread **me)
{
    int r = ss_plock_try(lk, me);
    if (r != SS_LOCK_TIMEOUT)
        return r;
    ss_deadline brief;
    if (!blocking || ss_remaining_ns(dl) < NOWAIT_LOCK_NS) {
        brief.infinite = 0;
        brief.deadline_ns = ss_now_ns() + NOWAIT_LOCK_NS;
        dl = &brief;
    }
    r = ss_plock_acquire(lk, dl, seg, me);
    if (r == SS_LOCK_RECOVERED)
        r = SS_LOCK_OK; /* nothing to repair: see the comment at the top */
    return r;
}

static void
raise_corrupt(ChannelObject *self, SegmentObject *seg, const char *what, uint64_t a, uint64_t b)
{
    ss_raise_format(seg,
                    "channel is corrupt: %s (%llu, %llu; capacity %llu)", what,
                    (unsigned long long)a, (unsigned long long)b,
                    (unsigned long long)self->capacity);
}

/* ---- producing ---------------------------------------------------------- */

typedef struct {
    uint64_t capacity;          /* copied: has_space runs without the GIL */
    ss_channel_header *h;
    uint64_t need;
} space_ctx;

static int
has_space(void *p)
{
    space_ctx *c = p;
    uint64_t t = atomic_load_explicit(&c->h->tail, memory_order_acquire);
    uint64_t hd = atomic_load_explicit(&c->h->head, memory_order_acquire);
    uint64_t used = t - hd;
    /* Inconsistent snapshots and corruption count as "go and look". */
    return used > c->capacity || c->capacity - used >= c->need;
}

static int
has_data(void *p)
{
    ss_channel_header *h = p;
    return atomic_load_explicit(&h->tail, memory_order_acquire) !=
           atomic_load_explicit(&h->head, memory_order_acquire);
}

/* A batch of records to append: parts[i] are the payload pieces, and record
 * r consists of parts [first[r], first[r+1]) with kind kinds[r]. */
typedef struct {
    const int *kinds;
    Py_buffer *parts;
    const Py_ssize_t *first;
    Py_ssize_t nrec;
    uint64_t need;              /* ring bytes of all its records */
} put_batch;

static uint64_t
record_length(const put_batch *b, Py_ssize_t r)
{
    uint64_t len = 0;
    for (Py_ssize_t i = b->first[r]; i < b->first[r + 1]; i++)
        len += (uint64_t)b->parts[i].len;
    return len;
}

/* Compute b->need; ValueError (-1) for a batch the ring can never hold. */
static int
size_batch(ChannelObject *self, put_batch *b)
{
    uint64_t max = MAX_PAYLOAD(self) < UINT32_MAX ? MAX_PAYLOAD(self) : UINT32_MAX;
    b->need = 0;
    for (Py_ssize_t r = 0; r < b->nrec; r++) {
        uint64_t len = record_length(b, r);
        if (len > max) {
            PyErr_Format(PyExc_ValueError,
                         "message of %llu bytes is larger than this channel can ever hold "
                         "(max_message_size is %llu)",
                         (unsigned long long)len, (unsigned long long)max);
            return -1;
        }
        b->need += record_size(len);
    }
    if (b->need > self->capacity) {
        PyErr_Format(PyExc_ValueError,
                     "batch of %zd messages needs %llu bytes, more than the channel's "
                     "capacity of %llu",
                     b->nrec, (unsigned long long)b->need, (unsigned long long)self->capacity);
        return -1;
    }
    return 0;
}

/* Write the records at stream position pos, after a padding record of pad
 * bytes if pad > 0; returns the position after them.  Touches only C
 * memory (the views are held, the operation keeps the mapping), so it may
 * run without the GIL. */
static uint64_t
write_batch(uint64_t cap, char *ring, uint64_t pos, uint64_t pad, const put_batch *b)
{
    if (pad > 0) {
        uint32_t ph[2] = {(uint32_t)(pad - SS_RECORD_HEADER), SS_KIND_PAD};
        ring_write(cap, ring, pos, ph, sizeof ph);
        pos += pad;
    }
    for (Py_ssize_t r = 0; r < b->nrec; r++) {
        uint64_t len = record_length(b, r);
        uint32_t rh[2] = {(uint32_t)len, (uint32_t)b->kinds[r]};
        ring_write(cap, ring, pos, rh, sizeof rh);
        uint64_t at = pos + SS_RECORD_HEADER;
        for (Py_ssize_t i = b->first[r]; i < b->first[r + 1]; i++) {
            ring_write(cap, ring, at, b->parts[i].buf, (uint64_t)b->parts[i].len);
            at += (uint64_t)b->parts[i].len;
        }
        pos += record_size(len);
    }
    return pos;
}

enum { PUT_DONE = 1, PUT_NO_ROOM = 0, PUT_CORRUPT = -1 };

/* With the producer lock held: append the batch if it fits, and commit it.
 * On PUT_CORRUPT, *t and *hd are the bad counters (raised after unlock). */
static int
put_locked(ChannelObject *self, ss_channel_header *h, const put_batch *b, uint64_t *t,
           uint64_t *hd)
{
    const uint64_t cap = self->capacity;
    *t = atomic_load_explicit(&h->tail, memory_order_relaxed);
    *hd = self->cached_head;
    uint64_t at = *t % cap;
    /* Records of REWIND_MIN_BYTES or more start at ring offset 0 when the
     * ring is empty: large messages then cycle through the first few MiB of
     * the ring, which stay in cache, whatever its capacity. */
    int may_rewind = b->need >= REWIND_MIN_BYTES && at >= b->need &&
                     cap - at - SS_RECORD_HEADER <= UINT32_MAX;
    if (*t - *hd > cap || cap - (*t - *hd) < b->need || (may_rewind && *hd != *t)) {
        *hd = atomic_load_explicit(&h->head, memory_order_acquire);
        self->cached_head = *hd;
    }
    if ((*t & 7) || *t - *hd > cap)
        return PUT_CORRUPT;
    if (cap - (*t - *hd) < b->need)
        return PUT_NO_ROOM;
    uint64_t pad = may_rewind && *hd == *t ? cap - at : 0;
    PyThreadState *ts = b->need >= SS_NOGIL_COPY_THRESHOLD ? PyEval_SaveThread() : NULL;
    uint64_t end = write_batch(cap, ring_of(h), *t, pad, b);
    if (ts != NULL)
        PyEval_RestoreThread(ts);
    /* Commit: the release store makes the bytes visible before tail. */
    atomic_store_explicit(&h->tail, end, memory_order_release);
    atomic_store_explicit(&h->put_count,
                          atomic_load_explicit(&h->put_count, memory_order_relaxed) +
                              (uint64_t)b->nrec,
                          memory_order_relaxed);
    return PUT_DONE;
}

/* Append a batch, all records committed at once.  Returns 1 done, 0 no
 * room (not blocking, or timed out), -1 error. */
static int
channel_put(ChannelObject *self, SegmentObject *seg, ss_channel_header *h, const int *kinds,
            Py_buffer *parts, const Py_ssize_t *first, Py_ssize_t nrec, int blocking,
            const ss_deadline *dl)
{
    put_batch b = {kinds, parts, first, nrec, 0};
    if (size_batch(self, &b) < 0)
        return -1;
    for (;;) {
        if (ss_segment_addr(seg) == NULL)
            return -1;
        ss_lock_thread *me;
        int lr = lock_side(self, seg, &h->prod_lock, blocking, dl, &me);
        if (lr == SS_LOCK_ERROR)
            return -1;
        if (lr == SS_LOCK_TIMEOUT)
            return 0;
        uint64_t t, hd;
        int r = put_locked(self, h, &b, &t, &hd);
        ss_plock_release(&h->prod_lock, me);
        if (r == PUT_DONE) {
            ss_wake_waiters(&h->data_event, &h->consumers_waiting);
            return 1;
        }
        if (r == PUT_CORRUPT) {
            raise_corrupt(self, seg, "tail and head are inconsistent", t, hd);
            return -1;
        }
        if (!blocking)
            return 0;
        space_ctx ctx = {self->capacity, h, b.need};
        int w = ss_wait_until(seg, has_space, &ctx, &h->space_event, &h->producers_waiting,
                              dl, &self->spin_put);
        if (w <= 0)
            return w;
    }
}

/* ---- consuming ---------------------------------------------------------- */

enum { TAKE_BYTES, TAKE_RECORD, TAKE_INTO };

/* Problems found while the consumer lock is held.  They are raised only
 * after unlocking: building an exception may run Python code (the error
 * factory, a garbage collection and its finalizers), and no Python code may
 * run while we hold a lock that it could try to take again. */
enum { TAKE_OK, TAKE_ERR_COUNTERS, TAKE_ERR_RECORD, TAKE_ERR_TOO_SMALL, TAKE_ERR_NOMEM };

/* Everything a result is made of is allocated before head moves: once it
 * has moved the message is gone from the ring, and a MemoryError after that
 * would lose it. */
typedef struct {
    int mode;
    Py_ssize_t max;          /* messages to take at most */
    Py_buffer *into;         /* TAKE_INTO */
    PyObject *list;          /* batch: append here; else single result */
    PyObject *pair;          /* single TAKE_RECORD: an empty 2-tuple to fill */
    PyObject *result;        /* single: bytes (or bytearray for OOB records),
                                the filled pair, or TAKE_INTO's length */
    int err;                 /* TAKE_ERR_* */
    uint64_t err_a, err_b;
    int freed;               /* padding was consumed: room was freed */
} take_req;

static int
take_failed(take_req *req, int err, uint64_t a, uint64_t b)
{
    req->err = err;
    req->err_a = a;
    req->err_b = b;
    return -1;
}

/* The object that receives one message of len bytes, filled from the ring
 * at pos: bytes, a bytearray (out-of-band buffers become writable arrays),
 * or for TAKE_INTO the caller's buffer (the object is then the length).
 * Only objects the garbage collector does not track are created here, so
 * no collection and no finalizer can run while the lock is held.  NULL
 * with req->err set (and no Python exception) on failure. */
static PyObject *
copy_message(ChannelObject *self, SegmentObject *seg, const char *ring, uint64_t pos,
             uint64_t len, int kind, take_req *req)
{
    PyObject *obj;
    char *dst;
    if (req->mode == TAKE_INTO) {
        if ((uint64_t)req->into->len < len) {
            take_failed(req, TAKE_ERR_TOO_SMALL, len, (uint64_t)req->into->len);
            return NULL;
        }
        obj = PyLong_FromSsize_t((Py_ssize_t)len);
        dst = req->into->buf;
    } else if (req->mode == TAKE_RECORD && kind == SS_KIND_PICKLE_OOB) {
        obj = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)len);
        dst = obj != NULL ? PyByteArray_AS_STRING(obj) : NULL;
    } else {
        obj = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
        dst = obj != NULL ? PyBytes_AS_STRING(obj) : NULL;
    }
    if (obj == NULL) {
        PyErr_Clear();
        take_failed(req, TAKE_ERR_NOMEM, 0, 0);
        return NULL;
    }
    ring_read(self, seg, ring, pos, dst, len);
    return obj;
}

/* Hand one message (a new reference, always consumed) to the request:
 * appended to a batch as kind, payload (paired into tuples, which the
 * garbage collector tracks, only after the lock is released), or stored as
 * the single result.  -1 with req->err set on failure. */
static int
deliver(take_req *req, PyObject *obj, int kind)
{
    if (req->list != NULL) {
        int failed = 0;
        if (req->mode == TAKE_RECORD) {
            PyObject *k = PyLong_FromLong(kind); /* a cached small int */
            failed = k == NULL || PyList_Append(req->list, k) < 0;
            Py_XDECREF(k);
        }
        if (!failed && PyList_Append(req->list, obj) < 0) {
            failed = 1;
            if (req->mode == TAKE_RECORD) { /* drop the kind just appended */
                Py_ssize_t n = PyList_GET_SIZE(req->list);
                PyList_SetSlice(req->list, n - 1, n, NULL);
            }
        }
        Py_DECREF(obj);
        if (failed) {
            PyErr_Clear();
            return take_failed(req, TAKE_ERR_NOMEM, 0, 0);
        }
        return 0;
    }
    if (req->pair != NULL) {
        PyObject *k = PyLong_FromLong(kind); /* a cached small int */
        if (k == NULL) {
            Py_DECREF(obj);
            PyErr_Clear();
            return take_failed(req, TAKE_ERR_NOMEM, 0, 0);
        }
        PyTuple_SET_ITEM(req->pair, 0, k);
        PyTuple_SET_ITEM(req->pair, 1, obj);
        req->result = req->pair;
        return 0;
    }
    req->result = obj;
    return 0;
}

/* With the consumer lock held: take up to req->max messages and commit
 * them.  Returns the number taken (>= 1), 0 when empty, -1 with req->err
 * set (and no Python exception). */
static Py_ssize_t
channel_take_locked(ChannelObject *self, SegmentObject *seg, ss_channel_header *h,
                    take_req *req)
{
    char *ring = ring_of(h);
    uint64_t hd = atomic_load_explicit(&h->head, memory_order_relaxed);
    uint64_t t = self->cached_tail;
    /* A single get uses the cached tail while it shows data; a batch looks
     * at the real tail so that it sees everything committed so far. */
    if (t == hd || t - hd > self->capacity || req->max > 1) {
        t = atomic_load_explicit(&h->tail, memory_order_acquire);
        self->cached_tail = t;
    }
    if ((hd & 7) || t - hd > self->capacity)
        return take_failed(req, TAKE_ERR_COUNTERS, t, hd);
    Py_ssize_t taken = 0;
    while (hd != t && taken < req->max) {
        uint32_t rh[2];
        ring_read(self, seg, ring, hd, rh, sizeof rh);
        uint64_t len = rh[0];
        int kind = (int)(rh[1] & 0xff);
        uint64_t rec = record_size(len);
        if (rec > t - hd) {
            take_failed(req, TAKE_ERR_RECORD, len, t - hd);
            break;
        }
        if (kind == SS_KIND_PAD) {
            /* Padding, not a message.  Release its room at once: it may span
             * most of the ring, and a producer waiting for that room must not
             * wait until we have copied the record behind it as well. */
            hd += rec;
            atomic_store_explicit(&h->head, hd, memory_order_release);
            req->freed = 1;
            continue;
        }
        PyObject *obj = copy_message(self, seg, ring, hd + SS_RECORD_HEADER, len, kind, req);
        if (obj == NULL || deliver(req, obj, kind) < 0)
            break;
        hd += rec;
        taken++;
    }
    if (taken > 0) {
        /* A batch that already holds good messages delivers exactly them; a
         * failing record stays for the next call, which reports it. */
        req->err = TAKE_OK;
        atomic_store_explicit(&h->head, hd, memory_order_release);
        atomic_store_explicit(&h->get_count,
                              atomic_load_explicit(&h->get_count, memory_order_relaxed) +
                                  (uint64_t)taken,
                              memory_order_relaxed);
        return taken;
    }
    return req->err == TAKE_OK ? 0 : -1;
}

/* Raise the problem channel_take_locked recorded (no lock held now). */
static void
raise_take_error(ChannelObject *self, SegmentObject *seg, const take_req *req)
{
    switch (req->err) {
    case TAKE_ERR_COUNTERS:
        raise_corrupt(self, seg, "tail and head are inconsistent", req->err_a, req->err_b);
        break;
    case TAKE_ERR_RECORD:
        raise_corrupt(self, seg, "record runs past tail", req->err_a, req->err_b);
        break;
    case TAKE_ERR_TOO_SMALL:
        PyErr_Format(PyExc_ValueError,
                     "next message has %llu bytes, more than the %llu-byte buffer "
                     "(it stays in the channel)",
                     (unsigned long long)req->err_a, (unsigned long long)req->err_b);
        break;
    default:
        PyErr_NoMemory();
        break;
    }
}

/* Returns 1 when messages were taken, 0 when none came (not blocking, or
 * timed out), -1 with an exception set. */
static int
channel_take(ChannelObject *self, take_req *req, int blocking, const ss_deadline *dl)
{
    SegmentObject *seg;
    ss_channel_header *h = channel_enter(self, &seg);
    if (h == NULL)
        return -1;
    int result;
    for (;;) {
        if (ss_segment_addr(seg) == NULL) {
            result = -1;
            break;
        }
        ss_lock_thread *me;
        int lr = lock_side(self, seg, &h->cons_lock, blocking, dl, &me);
        if (lr == SS_LOCK_ERROR || lr == SS_LOCK_TIMEOUT) {
            result = lr == SS_LOCK_ERROR ? -1 : 0;
            break;
        }
        Py_ssize_t n = channel_take_locked(self, seg, h, req);
        ss_plock_release(&h->cons_lock, me);
        if (n > 0 || req->freed)
            ss_wake_waiters(&h->space_event, &h->producers_waiting);
        if (n < 0)
            raise_take_error(self, seg, req);
        if (n != 0 || !blocking) {
            result = n > 0 ? 1 : (int)n;
            break;
        }
        int w = ss_wait_until(seg, has_data, h, &h->data_event, &h->consumers_waiting, dl,
                              &self->spin_get);
        if (w <= 0) {
            result = w;
            break;
        }
    }
    ss_object_leave(seg);
    return result;
}

/* channel_put for a caller that has not entered the channel yet. */
static int
channel_put_entered(ChannelObject *self, const int *kinds, Py_buffer *parts,
                    const Py_ssize_t *first, Py_ssize_t nrec, int blocking,
                    const ss_deadline *dl)
{
    SegmentObject *seg;
    ss_channel_header *h = channel_enter(self, &seg);
    if (h == NULL)
        return -1;
    int r = channel_put(self, seg, h, kinds, parts, first, nrec, blocking, dl);
    ss_object_leave(seg);
    return r;
}

/* ------------------------------------------------------------------------ */
/* Python methods. */

static PyObject *
raise_empty(ChannelObject *self)
{
    PyErr_SetNone(self->state->queue_empty);
    return NULL;
}

static PyObject *
raise_full(ChannelObject *self)
{
    PyErr_SetNone(self->state->queue_full);
    return NULL;
}

static const char *const put_names[] = {"data", "block", "timeout", NULL};
static const char *const get_names[] = {"block", "timeout", NULL};

static PyObject *
put_one(ChannelObject *self, int kind, PyObject *data, int blocking, const ss_deadline *dl)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t first[2] = {0, 1};
    int r = channel_put_entered(self, &kind, &view, first, 1, blocking, dl);
    PyBuffer_Release(&view);
    if (r < 0)
        return NULL;
    if (r == 0)
        return raise_full(self);
    Py_RETURN_NONE;
}

static PyObject *
channel_put_bytes(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    PyObject *a[3];
    if (ss_parse_args("put_bytes", args, nargs, kwnames, put_names, 1, a) < 0)
        return NULL;
    int blocking;
    ss_deadline dl;
    if (ss_parse_block_timeout(a[1], a[2], &blocking, &dl) < 0)
        return NULL;
    return put_one(self, SS_KIND_BYTES, a[0], blocking, &dl);
}

static PyObject *
channel_put_bytes_nowait(ChannelObject *self, PyObject *data)
{
    ss_deadline dl = {0, 0};
    return put_one(self, SS_KIND_BYTES, data, 0, &dl);
}

static PyObject *
take_one(ChannelObject *self, int mode, int blocking, const ss_deadline *dl)
{
    /* (kind, payload) is filled in before head moves, so it is created now,
     * before any lock is taken: a tuple is GC-tracked. */
    PyObject *pair = NULL;
    if (mode == TAKE_RECORD && (pair = PyTuple_New(2)) == NULL)
        return NULL;
    take_req req = {.mode = mode, .max = 1, .pair = pair};
    int n = channel_take(self, &req, blocking, dl);
    if (n <= 0) {
        Py_XDECREF(pair); /* still empty: no message was taken */
        return n < 0 ? NULL : raise_empty(self);
    }
    return req.result;
}

static PyObject *
channel_get_bytes(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    int blocking = 1;
    ss_deadline dl = {1, 0};
    if (nargs || kwnames) {
        PyObject *a[2];
        if (ss_parse_args("get_bytes", args, nargs, kwnames, get_names, 0, a) < 0 ||
            ss_parse_block_timeout(a[0], a[1], &blocking, &dl) < 0)
            return NULL;
    }
    return take_one(self, TAKE_BYTES, blocking, &dl);
}

static PyObject *
channel_get_bytes_nowait(ChannelObject *self, PyObject *unused)
{
    ss_deadline dl = {0, 0};
    return take_one(self, TAKE_BYTES, 0, &dl);
}

static PyObject *
channel_get_record(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames)
{
    PyObject *a[2];
    int blocking;
    ss_deadline dl;
    if (ss_parse_args("_get_record", args, nargs, kwnames, get_names, 0, a) < 0 ||
        ss_parse_block_timeout(a[0], a[1], &blocking, &dl) < 0)
        return NULL;
    return take_one(self, TAKE_RECORD, blocking, &dl);
}

static PyObject *
channel_recv_into(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    static const char *const names[] = {"buffer", "block", "timeout", NULL};
    PyObject *a[3];
    int blocking;
    ss_deadline dl;
    if (ss_parse_args("recv_into", args, nargs, kwnames, names, 1, a) < 0 ||
        ss_parse_block_timeout(a[1], a[2], &blocking, &dl) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_WRITABLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) { /* as socket.recv_into */
            PyErr_Format(PyExc_TypeError,
                         "recv_into() needs a writable buffer, not %.100s",
                         Py_TYPE(a[0])->tp_name);
        }
        return NULL;
    }
    take_req req = {.mode = TAKE_INTO, .max = 1, .into = &view};
    int n = channel_take(self, &req, blocking, &dl);
    PyBuffer_Release(&view);
    if (n < 0)
        return NULL;
    if (n == 0)
        return raise_empty(self);
    return req.result;
}

static Py_ssize_t
parse_max_messages(PyObject *obj)
{
    if (obj == NULL || obj == Py_None)
        return PY_SSIZE_T_MAX;
    /* Clipped, not refused: "up to 10**30 messages" means all there are. */
    Py_ssize_t n = PyNumber_AsSsize_t(obj, NULL);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "max_messages must be at least 1, not %zd", n);
        return -1;
    }
    return n;
}

static PyObject *
get_many(ChannelObject *self, int mode, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames, const char *fname)
{
    static const char *const names[] = {"max_messages", "block", "timeout", NULL};
    PyObject *a[3];
    int blocking;
    ss_deadline dl;
    if (ss_parse_args(fname, args, nargs, kwnames, names, 0, a) < 0 ||
        ss_parse_block_timeout(a[1], a[2], &blocking, &dl) < 0)
        return NULL;
    Py_ssize_t max = parse_max_messages(a[0]);
    if (max < 0)
        return NULL;
    /* Created before any lock is taken: a list is GC-tracked, and creating
     * one may run a collection. */
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    take_req req = {.mode = mode, .max = max, .list = list};
    int n = channel_take(self, &req, blocking, &dl);
    if (n < 0) {
        Py_DECREF(list);
        return NULL;
    }
    if (n == 0) {
        Py_DECREF(list);
        return raise_empty(self);
    }
    /* Records stay flat, [kind, data, kind, data, ...]: pairing them up
     * would allocate after head moved, and a MemoryError then would lose
     * the whole batch. */
    return list;
}

static PyObject *
channel_get_many_bytes(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames)
{
    return get_many(self, TAKE_BYTES, args, nargs, kwnames, "get_many_bytes");
}

static PyObject *
channel_get_records(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    return get_many(self, TAKE_RECORD, args, nargs, kwnames, "_get_records");
}

/* Put several records from a sequence.  For put_many_bytes each item is one
 * bytes-like record of kind BYTES; for _put_parts there is one record of the
 * given kind made of all the items. */
static PyObject *
put_from_sequence(ChannelObject *self, PyObject *seqobj, int one_record, int kind, int blocking,
                  const ss_deadline *dl)
{
    /* A private copy: getting a buffer can run Python code that mutates the
     * caller's list. */
    PyObject *seq = PySequence_Tuple(seqobj);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (n == 0) {
        Py_DECREF(seq);
        Py_RETURN_NONE;
    }
    Py_buffer *views = PyMem_New(Py_buffer, (size_t)n);
    Py_ssize_t *first = PyMem_New(Py_ssize_t, (size_t)n + 1);
    int *kinds = PyMem_New(int, (size_t)n);
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    if (views == NULL || first == NULL || kinds == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < n; got++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(seq, got), &views[got], PyBUF_SIMPLE) < 0)
            goto done;
    }
    Py_ssize_t nrec;
    if (one_record) {
        first[0] = 0;
        first[1] = n;
        kinds[0] = kind;
        nrec = 1;
    } else {
        for (Py_ssize_t i = 0; i <= n; i++)
            first[i] = i;
        for (Py_ssize_t i = 0; i < n; i++)
            kinds[i] = kind;
        nrec = n;
    }
    int r = channel_put_entered(self, kinds, views, first, nrec, blocking, dl);
    if (r > 0)
        result = Py_NewRef(Py_None);
    else if (r == 0)
        raise_full(self);
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(first);
    PyMem_Free(kinds);
    Py_DECREF(seq);
    return result;
}

static PyObject *
channel_put_many_bytes(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames)
{
    static const char *const names[] = {"items", "block", "timeout", NULL};
    PyObject *a[3];
    int blocking;
    ss_deadline dl;
    if (ss_parse_args("put_many_bytes", args, nargs, kwnames, names, 1, a) < 0 ||
        ss_parse_block_timeout(a[1], a[2], &blocking, &dl) < 0)
        return NULL;
    return put_from_sequence(self, a[0], 0, SS_KIND_BYTES, blocking, &dl);
}

/* _put_parts and _put_records: (kind, items, block, timeout) with kind in
 * [BYTES, max_kind]; one record of all the items, or one record per item. */
static PyObject *
put_kind_items(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               const char *fname, const char *const *names, int one_record, long max_kind)
{
    PyObject *a[4];
    int blocking;
    ss_deadline dl;
    if (ss_parse_args(fname, args, nargs, kwnames, names, 2, a) < 0 ||
        ss_parse_block_timeout(a[2], a[3], &blocking, &dl) < 0)
        return NULL;
    long kind = PyLong_AsLong(a[0]);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    if (kind < SS_KIND_BYTES || kind > max_kind) {
        PyErr_Format(PyExc_ValueError, "%s: record kind %ld is not allowed", fname, kind);
        return NULL;
    }
    return put_from_sequence(self, a[1], one_record, (int)kind, blocking, &dl);
}

static PyObject *
channel_put_parts(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    static const char *const names[] = {"kind", "parts", "block", "timeout", NULL};
    return put_kind_items(self, args, nargs, kwnames, "_put_parts", names, 1,
                          SS_KIND_PICKLE_OOB);
}

static PyObject *
channel_put_records(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"kind", "items", "block", "timeout", NULL};
    /* Out-of-band records need their parts joined: one at a time only. */
    return put_kind_items(self, args, nargs, kwnames, "_put_records", names, 0, SS_KIND_PICKLE);
}

/* ---- waiting without consuming (asyncio) -------------------------------- */

static PyObject *
channel_wait_readable(ChannelObject *self, PyObject *timeout)
{
    ss_deadline dl;
    if (ss_parse_timeout(timeout, &dl) < 0)
        return NULL;
    SegmentObject *seg;
    ss_channel_header *h = channel_enter(self, &seg);
    if (h == NULL)
        return NULL;
    int w = ss_wait_until(seg, has_data, h, &h->data_event, &h->consumers_waiting, &dl,
                          &self->spin_get);
    ss_object_leave(seg);
    if (w < 0)
        return NULL;
    return PyBool_FromLong(w);
}

static PyObject *
channel_wait_writable(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!ss_check_nargs("_wait_writable", nargs, 2, 2))
        return NULL;
    Py_ssize_t nbytes = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
    if (nbytes == -1 && PyErr_Occurred())
        return NULL;
    ss_deadline dl;
    if (ss_parse_timeout(args[1], &dl) < 0)
        return NULL;
    if (nbytes < 0 || (uint64_t)nbytes > MAX_PAYLOAD(self)) {
        PyErr_SetString(PyExc_ValueError, "nbytes is outside what this channel can hold");
        return NULL;
    }
    SegmentObject *seg;
    ss_channel_header *h = channel_enter(self, &seg);
    if (h == NULL)
        return NULL;
    space_ctx ctx = {self->capacity, h, record_size((uint64_t)nbytes)};
    int w = ss_wait_until(seg, has_space, &ctx, &h->space_event, &h->producers_waiting, &dl,
                          &self->spin_put);
    ss_object_leave(seg);
    if (w < 0)
        return NULL;
    return PyBool_FromLong(w);
}

/* ---- state -------------------------------------------------------------- */

/* The header for a read that never releases the GIL (no reference needed). */
static ss_channel_header *
channel_peek(ChannelObject *self)
{
    return (ss_channel_header *)ss_object_peek(self->state, self->seg, "channel is closed");
}

static PyObject *
channel_qsize(ChannelObject *self, PyObject *unused)
{
    ss_channel_header *h = channel_peek(self);
    if (h == NULL)
        return NULL;
    uint64_t g = atomic_load(&h->get_count);
    uint64_t p = atomic_load(&h->put_count);
    /* Approximate, like queue.Queue.qsize; never negative. */
    return PyLong_FromUnsignedLongLong(p > g ? p - g : 0);
}

static PyObject *
channel_empty(ChannelObject *self, PyObject *unused)
{
    ss_channel_header *h = channel_peek(self);
    if (h == NULL)
        return NULL;
    return PyBool_FromLong(!has_data(h));
}

static PyObject *
channel_full(ChannelObject *self, PyObject *unused)
{
    ss_channel_header *h = channel_peek(self);
    if (h == NULL)
        return NULL;
    space_ctx ctx = {self->capacity, h, SS_RECORD_HEADER};
    return PyBool_FromLong(!has_space(&ctx));
}

static PyObject *
channel_stats(ChannelObject *self, PyObject *unused)
{
    ss_channel_header *h = channel_peek(self);
    if (h == NULL)
        return NULL;
    uint64_t t = atomic_load(&h->tail), hd = atomic_load(&h->head);
    uint64_t p = atomic_load(&h->put_count), g = atomic_load(&h->get_count);
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsIsIsIsIsK}", "capacity", (unsigned long long)self->capacity, "used",
        (unsigned long long)(t - hd <= self->capacity ? t - hd : self->capacity), "head",
        (unsigned long long)hd, "tail", (unsigned long long)t, "put_count",
        (unsigned long long)p, "get_count", (unsigned long long)g, "messages",
        (unsigned long long)(p > g ? p - g : 0), "consumers_waiting",
        (unsigned)atomic_load(&h->consumers_waiting), "producers_waiting",
        (unsigned)atomic_load(&h->producers_waiting), "producer_lock_pid",
        (unsigned)ss_plock_holder(&h->prod_lock), "consumer_lock_pid",
        (unsigned)ss_plock_holder(&h->cons_lock), "recoveries",
        (unsigned long long)(atomic_load(&h->prod_lock.recoveries) +
                             atomic_load(&h->cons_lock.recoveries)));
}

/* ---- attach / init ------------------------------------------------------ */

static const char *const attach_names[] = {"segment", "create", NULL};

static PyObject *
channel_attach(ChannelObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[2];
    if (ss_parse_args("_attach", args, nargs, kwnames, attach_names, 1, a) < 0)
        return NULL;
    int create = a[1] != NULL ? PyObject_IsTrue(a[1]) : 0;
    if (create < 0)
        return NULL;
    char *base = ss_object_attach_check(self->state, a[0],
                                        self->seg != NULL || self->capacity != 0, "Channel");
    if (base == NULL)
        return NULL;
    SegmentObject *seg = (SegmentObject *)a[0];
    ss_channel_header *h = (ss_channel_header *)base;
    if (create) {
        if (seg->size < SS_CHANNEL_HEADER_SIZE + 64) {
            PyErr_Format(PyExc_ValueError, "segment of %zd bytes is too small for a channel",
                         seg->size);
            return NULL;
        }
        memset(base, 0, SS_CHANNEL_HEADER_SIZE);
        ss_object_init_header(base, SS_CHANNEL_MAGIC, SS_CHANNEL_HEADER_SIZE,
                              ((uint64_t)seg->size - SS_CHANNEL_HEADER_SIZE) & ~(uint64_t)7, 0);
    }
    int ready;
    if (ss_check_common(seg, SS_CHANNEL_MAGIC, SS_CHANNEL_HEADER_SIZE, "Channel", &ready) < 0)
        return NULL;
    if (!ready)
        Py_RETURN_FALSE; /* not initialised yet: the caller waits and retries */
    uint64_t cap = h->common.capacity;
    if (h->common.header_size != SS_CHANNEL_HEADER_SIZE || cap < 16 || (cap & 7) ||
        cap > (uint64_t)seg->size - SS_CHANNEL_HEADER_SIZE)
        return ss_raise_format(seg,
                               "Channel header is corrupt: capacity %llu does not fit the "
                               "%zd-byte segment",
                               (unsigned long long)cap, seg->size);
    self->seg = (SegmentObject *)Py_NewRef(seg);
    self->capacity = cap;
    self->cached_head = atomic_load(&h->head);
    self->cached_tail = atomic_load(&h->tail);
    Py_RETURN_TRUE;
}

static PyObject *
channel_detach_core(ChannelObject *self, PyObject *unused)
{
    SegmentObject *seg = self->seg;
    if (seg != NULL && seg->addr != NULL) {
        ss_channel_header *h = (ss_channel_header *)seg->addr;
        _Atomic uint32_t *const events[] = {&h->data_event, &h->space_event};
        _Atomic uint32_t *const locks[] = {&h->prod_lock.word, &h->cons_lock.word};
        ss_object_detach(seg, events, 2, locks, 2);
    }
    Py_CLEAR(self->seg);
    Py_RETURN_NONE;
}

static PyObject *
channel_get_capacity(ChannelObject *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->capacity);
}

static PyObject *
channel_get_max_message_size(ChannelObject *self, void *closure)
{
    uint64_t m = self->capacity ? MAX_PAYLOAD(self) : 0;
    return PyLong_FromUnsignedLongLong(m > UINT32_MAX ? UINT32_MAX : m);
}

static PyObject *
channel_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ss_state *st = ss_state_from_type(type);
    if (st == NULL)
        return NULL;
    ChannelObject *self = (ChannelObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->state = st;
    self->spin_get.spin_ns = SS_SPIN_START_NS;
    self->spin_put.spin_ns = SS_SPIN_START_NS;
    return (PyObject *)self;
}

static int
channel_traverse(ChannelObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->seg);
    return 0;
}

static int
channel_clear(ChannelObject *self)
{
    Py_CLEAR(self->seg);
    return 0;
}

static void
channel_dealloc(ChannelObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    channel_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)
#define CFUNC(f) ((PyCFunction)(void (*)(void))(f))

static PyMethodDef channel_methods[] = {
    {"put_bytes", CFUNC(channel_put_bytes), FASTKW,
     "put_bytes($self, /, data, block=True, timeout=None)\n--\n\n"
     "Append one message of raw bytes.  Waits for room while block is true;\n"
     "raises queue.Full when there is none (not blocking, or timed out), and\n"
     "ValueError at once for a message larger than max_message_size."},
    {"put_bytes_nowait", (PyCFunction)channel_put_bytes_nowait, METH_O,
     "put_bytes_nowait($self, data, /)\n--\n\nput_bytes(data, block=False)."},
    {"get_bytes", CFUNC(channel_get_bytes), FASTKW,
     "get_bytes($self, /, block=True, timeout=None)\n--\n\n"
     "Remove and return the oldest message as bytes.  Raises queue.Empty when\n"
     "there is none (not blocking, or timed out)."},
    {"get_bytes_nowait", (PyCFunction)channel_get_bytes_nowait, METH_NOARGS,
     "get_bytes_nowait($self, /)\n--\n\nget_bytes(block=False)."},
    {"recv_into", CFUNC(channel_recv_into), FASTKW,
     "recv_into($self, /, buffer, block=True, timeout=None)\n--\n\n"
     "Copy the oldest message into a writable buffer; return its length.\n"
     "A message larger than the buffer raises ValueError and stays queued."},
    {"put_many_bytes", CFUNC(channel_put_many_bytes), FASTKW,
     "put_many_bytes($self, /, items, block=True, timeout=None)\n--\n\n"
     "Append several messages of raw bytes, committed all at once."},
    {"get_many_bytes", CFUNC(channel_get_many_bytes), FASTKW,
     "get_many_bytes($self, /, max_messages=None, block=True, timeout=None)\n--\n\n"
     "Remove and return up to max_messages messages (at least one) as a list."},
    {"_put_parts", CFUNC(channel_put_parts), FASTKW,
     "_put_parts($self, /, kind, parts, block=True, timeout=None)\n--\n\n"
     "Append one record of the given kind whose payload is the parts, joined."},
    {"_put_records", CFUNC(channel_put_records), FASTKW,
     "_put_records($self, /, kind, items, block=True, timeout=None)\n--\n\n"
     "Append one record of the given kind per item, committed all at once."},
    {"_get_record", CFUNC(channel_get_record), FASTKW,
     "_get_record($self, /, block=True, timeout=None)\n--\n\n"
     "Remove the oldest record; return (kind, payload)."},
    {"_get_records", CFUNC(channel_get_records), FASTKW,
     "_get_records($self, /, max_messages=None, block=True, timeout=None)\n--\n\n"
     "Remove up to max_messages records; return them flat: [kind, payload, ...]."},
    {"_wait_readable", (PyCFunction)channel_wait_readable, METH_O,
     "_wait_readable($self, timeout, /)\n--\n\n"
     "Wait until a message is queued, without taking it.  Returns False on timeout."},
    {"_wait_writable", CFUNC(channel_wait_writable), METH_FASTCALL,
     "_wait_writable($self, nbytes, timeout, /)\n--\n\n"
     "Wait until a message of nbytes would fit.  Returns False on timeout."},
    {"qsize", (PyCFunction)channel_qsize, METH_NOARGS,
     "qsize($self, /)\n--\n\nApproximate number of queued messages."},
    {"empty", (PyCFunction)channel_empty, METH_NOARGS,
     "empty($self, /)\n--\n\nWhether no message is queued (a snapshot)."},
    {"full", (PyCFunction)channel_full, METH_NOARGS,
     "full($self, /)\n--\n\nWhether not even an empty message would fit (a snapshot)."},
    {"_stats", (PyCFunction)channel_stats, METH_NOARGS,
     "_stats($self, /)\n--\n\nCounters from the header, as a dict."},
    {"_attach", CFUNC(channel_attach), METH_FASTCALL | METH_KEYWORDS,
     "_attach($self, /, segment, create=False)\n--\n\n"
     "Bind to a segment, initialising its header when create is true.  Returns\n"
     "False if the header is not initialised yet."},
    {"_detach_core", (PyCFunction)channel_detach_core, METH_NOARGS,
     "_detach_core($self, /)\n--\n\nDrop the reference to the segment."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef channel_getset[] = {
    {"capacity", (getter)channel_get_capacity, NULL, "ring size in bytes", NULL},
    {"max_message_size", (getter)channel_get_max_message_size, NULL,
     "the largest message that can ever be put", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef channel_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ChannelObject, weakreflist), READONLY},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot channel_slots[] = {
    {Py_tp_new, channel_new},
    {Py_tp_dealloc, channel_dealloc},
    {Py_tp_traverse, channel_traverse},
    {Py_tp_clear, channel_clear},
    {Py_tp_methods, channel_methods},
    {Py_tp_getset, channel_getset},
    {Py_tp_members, channel_members},
    {Py_tp_doc, "Base of shmsem.Channel: the ring buffer operations in C."},
    {0, NULL},
};

PyType_Spec ss_channel_spec = {
    .name = "shmsem._core.ChannelBase",
    .basicsize = sizeof(ChannelObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = channel_slots,
};

int
ss_channel_module_init(PyObject *module)
{
    PyObject *magic = PyLong_FromUnsignedLongLong(SS_CHANNEL_MAGIC);
    if (magic == NULL)
        return -1;
    if (PyModule_AddObject(module, "CHANNEL_MAGIC", magic) < 0) {
        Py_DECREF(magic);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "CHANNEL_HEADER_SIZE", SS_CHANNEL_HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "RECORD_HEADER_SIZE", SS_RECORD_HEADER) < 0 ||
        PyModule_AddIntConstant(module, "KIND_BYTES", SS_KIND_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "KIND_PICKLE", SS_KIND_PICKLE) < 0 ||
        PyModule_AddIntConstant(module, "KIND_PICKLE_OOB", SS_KIND_PICKLE_OOB) < 0 ||
        PyModule_AddIntConstant(module, "LAYOUT_VERSION", SS_LAYOUT_VERSION) < 0)
        return -1;
    /* The offsets docs/protocol.md gives, for the inspector and the tests:
     * one source of truth, the structs above. */
    PyObject *ch = PyDict_New(), *lk = PyDict_New();
    int bad = ch == NULL || lk == NULL ||
              ss_add_offset(ch, "producer_lock", offsetof(ss_channel_header, prod_lock)) ||
              ss_add_offset(ch, "tail", offsetof(ss_channel_header, tail)) ||
              ss_add_offset(ch, "put_count", offsetof(ss_channel_header, put_count)) ||
              ss_add_offset(ch, "consumer_lock", offsetof(ss_channel_header, cons_lock)) ||
              ss_add_offset(ch, "head", offsetof(ss_channel_header, head)) ||
              ss_add_offset(ch, "get_count", offsetof(ss_channel_header, get_count)) ||
              ss_add_offset(ch, "data_event", offsetof(ss_channel_header, data_event)) ||
              ss_add_offset(ch, "space_event", offsetof(ss_channel_header, space_event)) ||
              ss_add_offset(ch, "consumers_waiting",
                            offsetof(ss_channel_header, consumers_waiting)) ||
              ss_add_offset(ch, "producers_waiting",
                            offsetof(ss_channel_header, producers_waiting)) ||
              ss_add_offset(lk, "word", offsetof(ss_plock, word)) ||
              ss_add_offset(lk, "recoveries", offsetof(ss_plock, recoveries)) ||
              ss_add_offset(lk, "links", offsetof(ss_plock, links)) ||
              ss_add_offset(lk, "size", sizeof(ss_plock));
    if (bad || PyModule_AddObject(module, "CHANNEL_OFFSETS", ch) < 0) {
        Py_XDECREF(ch);
        Py_XDECREF(lk);
        return -1;
    }
    if (PyModule_AddObject(module, "LOCK_OFFSETS", lk) < 0) {
        Py_DECREF(lk);
        return -1;
    }
    return 0;
}
