/* shmsem._core: the small C core of shmsem.
 *
 * C does only what needs C: the System V syscalls, releasing the GIL around
 * anything that can block, the PEP 475 EINTR loop, the buffer protocol with
 * export counting, and the atomics and futex words of Channel and Mailbox.
 * Policy (creation, ownership, key-squatting checks, reprs, pickling) lives in
 * the Python modules next to this directory.
 */
#ifndef SHMSEM_H
#define SHMSEM_H

#ifndef __linux__
#error "shmsem supports Linux only (System V IPC and futexes as Linux provides them)"
#endif

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/types.h>

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#endif

/* A type whose objects only the C core makes (Python must get a TypeError,
 * never a half-built object) puts SS_TPFLAGS_NO_NEW in its spec's flags and
 * SS_SLOT_NO_NEW first in its slots.  Python 3.10 and later have a flag for
 * this; 3.9 would inherit object's tp_new, so it gets one that refuses. */
#ifdef Py_TPFLAGS_DISALLOW_INSTANTIATION
#define SS_TPFLAGS_NO_NEW Py_TPFLAGS_DISALLOW_INSTANTIATION
#define SS_SLOT_NO_NEW
#else
#define SS_TPFLAGS_NO_NEW 0
#define SS_SLOT_NO_NEW {Py_tp_new, (void *)ss_no_new},
PyObject *ss_no_new(PyTypeObject *type, PyObject *args, PyObject *kwds);
#endif

#ifndef SHMSEM_VERSION
#error "SHMSEM_VERSION must be defined by the build (setup.py)"
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmsem's on-memory formats are little-endian; big-endian Linux is not supported"
#endif

/* The kernel's SEMVMX (include/uapi/linux/sem.h), fixed at 32767 since Linux 1.0.
 * <linux/sem.h> clashes with <sys/sem.h>, so it is restated here. */
#define SS_SEMVMX 32767

/* glibc and musl name the key field of struct ipc_perm differently. */
#if defined(__GLIBC__)
#define SS_PERM_KEY(perm) ((perm).__key)
#define SS_MSG_CBYTES(ds) ((ds).__msg_cbytes)
#else
#define SS_PERM_KEY(perm) ((perm).__ipc_perm_key)
#define SS_MSG_CBYTES(ds) ((ds).msg_cbytes)
#endif

/* ------------------------------------------------------------------------ */
/* Module state (multi-phase init).                                          */

typedef struct {
    PyObject *error_factory;  /* shmsem.errors._from_core, set at import */
    PyObject *queue_empty;    /* queue.Empty */
    PyObject *queue_full;     /* queue.Full */
    PyTypeObject *segment_type;
    PyTypeObject *pin_type;
    PyTypeObject *sem_type;
    PyTypeObject *channel_type;
    PyTypeObject *mailbox_type;
} ss_state;

extern struct PyModuleDef shmsem_module_def;

ss_state *ss_state_from_type(PyTypeObject *tp);

static inline ss_state *
ss_state_from_module(PyObject *module)
{
    return (ss_state *)PyModule_GetState(module);
}

/* ------------------------------------------------------------------------ */
/* Errors.  Every error leaves C through the factory registered by
 * shmsem/errors.py, so the exception classes and messages are defined in one
 * place.  kind is one of "os", "closed", "frame", "format", "readonly". */

PyObject *ss_raise(ss_state *st, const char *kind, int err, const char *syscall,
                   PyObject *key, long id, const char *detail);
PyObject *ss_raise_errno(ss_state *st, const char *syscall, PyObject *key, long id);
PyObject *ss_raise_closed(ss_state *st, const char *what);
/* Raise for a failed shmget/semget/msgget, naming the key (err is errno). */
PyObject *ss_raise_for_key(ss_state *st, int err, const char *syscall, key_t key);
/* A key as Python shows it: an int in [-2**31, 2**31). */
PyObject *ss_key_object(key_t key);

/* Arguments of the System V functions: Python int -> C, with range checks
 * and messages that name the argument (boundary.c).  0, or -1 with an
 * exception set. */
int ss_arg_int(PyObject *obj, const char *what, int *out);
int ss_arg_id(PyObject *obj, const char *what, int *out);
int ss_arg_size(PyObject *obj, const char *what, Py_ssize_t *out);

/* ------------------------------------------------------------------------ */
/* Time and deadlines, on CLOCK_MONOTONIC. */

typedef struct {
    int infinite;
    int64_t deadline_ns;  /* CLOCK_MONOTONIC, valid when !infinite */
} ss_deadline;

static inline int64_t
ss_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* timeout None or inf -> infinite.  Negative or NaN -> ValueError.
 * Returns -1 with an exception set on bad input. */
int ss_parse_timeout(PyObject *timeout, ss_deadline *out);

/* Remaining time; returns 0 when the deadline has passed. */
static inline int
ss_remaining(const ss_deadline *d, struct timespec *ts)
{
    int64_t left = d->deadline_ns - ss_now_ns();
    if (left <= 0) {
        ts->tv_sec = 0;
        ts->tv_nsec = 0;
        return 0;
    }
    ts->tv_sec = (time_t)(left / 1000000000LL);
    ts->tv_nsec = (long)(left % 1000000000LL);
    return 1;
}

static inline int64_t
ss_remaining_ns(const ss_deadline *d)
{
    if (d->infinite)
        return INT64_MAX;
    int64_t left = d->deadline_ns - ss_now_ns();
    return left > 0 ? left : 0;
}

/* Sleep up to ns nanoseconds (GIL must be released). Returns -1 on EINTR. */
int ss_sleep_ns(int64_t ns);

static inline int
ss_check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t min, Py_ssize_t max)
{
    if (nargs < min || nargs > max) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd positional arguments (%zd given)",
                     name, min, max, nargs);
        return 0;
    }
    return 1;
}

/* Map vectorcall arguments onto slots by position or keyword name.
 * names: NULL-terminated; the first nrequired are required.  out[i] stays
 * NULL for a missing optional argument.  Returns 0, or -1 with TypeError. */
int ss_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nrequired, PyObject **out);

/* block/timeout as queue.Queue takes them: timeout only counts when block is
 * true, None waits forever, negative or NaN raises ValueError. */
int ss_parse_block_timeout(PyObject *block, PyObject *timeout, int *blocking, ss_deadline *dl);

/* Parse a key from Python: int in [-2**31, 2**32) -> key_t, never truncated. */
int ss_parse_key(PyObject *obj, key_t *out);

/* ------------------------------------------------------------------------ */
/* Futex words in shared memory.  Shared (not PRIVATE) futexes, because the
 * waiters live in different processes. */

int ss_futex_wait(_Atomic uint32_t *addr, uint32_t expected, int64_t timeout_ns);
void ss_futex_wake(_Atomic uint32_t *addr, int n);

static inline void
ss_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* ------------------------------------------------------------------------ */
/* Segment: one shmat() mapping, exported through the buffer protocol. */

typedef struct {
    PyObject_HEAD
    ss_state *state;
    char *addr;            /* NULL once unmapped: every access checks it */
    Py_ssize_t size;
    int shmid;
    int key;               /* from IPC_STAT at attach, for error messages */
    int readonly;
    Py_ssize_t exports;    /* live pins: views that keep the mapping (segment.c) */
    Py_ssize_t busy;       /* operations in progress; the mapping stays while > 0 */
    int closing;           /* detach requested: nothing new starts, and the last
                              operation to leave unmaps */
    PyObject *weakreflist;
} SegmentObject;

/* Raise an error of the given kind about this segment, naming its key and id. */
PyObject *ss_segment_raise(SegmentObject *seg, const char *kind, const char *detail);
/* FormatError about this segment, printf-style. */
PyObject *ss_raise_format(SegmentObject *seg, const char *fmt, ...);

/* The mapping for a quick access that neither releases the GIL nor runs
 * Python code; NULL with ClosedError set when detached or being detached. */
static inline char *
ss_segment_addr(SegmentObject *seg)
{
    if (seg->addr == NULL || seg->closing) {
        ss_segment_raise(seg, "closed", "shared memory segment is detached");
        return NULL;
    }
    return seg->addr;
}

/* Begin an operation that may release the GIL or run Python code (signal
 * handlers, finalizers).  While any operation is in progress the mapping
 * stays: detach() only marks the segment closing, and the last operation to
 * leave unmaps it.  Every successful enter is paired with ss_segment_leave. */
static inline char *
ss_segment_enter(SegmentObject *seg)
{
    char *addr = ss_segment_addr(seg);
    if (addr != NULL)
        seg->busy++;
    return addr;
}

void ss_segment_leave(SegmentObject *seg);

/* ss_segment_enter for an object (Channel, Mailbox) that holds a segment
 * until it is closed: *segp gets a new reference to seg, so that a close by
 * another thread while we wait with the GIL released frees neither the
 * object nor the mapping.  seg NULL (closed) raises ClosedError with
 * closed_msg.  Pair a success with ss_object_leave(*segp). */
char *ss_object_enter(ss_state *st, SegmentObject *seg, const char *closed_msg,
                      SegmentObject **segp);
void ss_object_leave(SegmentObject *seg);

/* The mapping of such an object for a read that never releases the GIL (no
 * operation, no reference needed).  NULL with ClosedError set (closed_msg)
 * or with the segment's own error (detached). */
char *ss_object_peek(ss_state *st, SegmentObject *seg, const char *closed_msg);

/* memmove, with the GIL released when it is large.  The caller is inside an
 * operation (ss_segment_enter), which keeps the mapping meanwhile. */
void ss_copy(SegmentObject *seg, void *dst, const void *src, size_t n);

#define SS_NOGIL_COPY_THRESHOLD (256 * 1024)

/* ------------------------------------------------------------------------ */
/* Process lock in shared memory (see plock.c): a robust futex, which the
 * kernel marks FUTEX_OWNER_DIED when its holder exits or execs. */

typedef struct {
    _Atomic uint32_t word;         /* 0 free; else holder's tid | FUTEX_WAITERS | FUTEX_OWNER_DIED */
    uint32_t reserved0;
    _Atomic uint64_t recoveries;   /* locks taken over from dead holders, ever */
    uint64_t reserved1;
    uint64_t links[2];             /* the holder's robust-list node; written, never read */
    uint64_t reserved2;
} ss_plock;

#define SS_PLOCK_SIZE 48
#define SS_PLOCK_LINKS 24       /* offset of links in the lock */
#define SS_PLOCK_LINKS_END 40
/* Where our own robust list (when the C library registered none) puts the
 * node, from the word: glibc's geometry (its futex_offset is -32). */
#define SS_PLOCK_NODE 32

enum { SS_LOCK_OK = 0, SS_LOCK_RECOVERED = 1, SS_LOCK_TIMEOUT = 2, SS_LOCK_ERROR = -1 };

/* This thread's robust-list state (plock.c).  A successful lock hands it to
 * the caller, which passes it back to the unlock: reaching thread-local
 * storage from a dlopen'ed module costs a call, which this saves. */
typedef struct ss_lock_thread ss_lock_thread;

/* Fast path: try once, holding the GIL.  Returns SS_LOCK_OK (*me set),
 * SS_LOCK_TIMEOUT (held by someone), or SS_LOCK_ERROR with an exception set
 * (no robust list in this thread). */
int ss_plock_try(ss_plock *lk, ss_lock_thread **me);
/* Slow path: called with the GIL held, inside an operation on seg; releases
 * the GIL while waiting.  Returns SS_LOCK_OK / SS_LOCK_RECOVERED (the holder
 * died; counted in lk->recoveries), both with *me set, SS_LOCK_TIMEOUT, or
 * SS_LOCK_ERROR with a Python exception set (a signal handler raised, or the
 * segment is being detached). */
int ss_plock_acquire(ss_plock *lk, const ss_deadline *dl, SegmentObject *seg,
                     ss_lock_thread **me);
/* Unlock, in the thread that locked, with the *me the lock gave. */
void ss_plock_release(ss_plock *lk, ss_lock_thread *me);
/* The holder's thread id as its own PID namespace numbers it; 0 when free. */
uint32_t ss_plock_holder(ss_plock *lk);

/* ------------------------------------------------------------------------ */
/* Waiting (wait.c): an adaptive spin, then a futex sleep in bounded slices. */

typedef struct {
    /* current spin budget; adapts between MIN and MAX.  Atomic because threads
     * sharing a handle update it with the GIL released; relaxed is enough. */
    _Atomic int64_t spin_ns;
} ss_spin;

#define SS_SPIN_MIN_NS 2000
#define SS_SPIN_MAX_NS 100000
#define SS_SPIN_START_NS 20000
/* A sleeper re-checks at least this often, so that a wake-up lost to a
 * process killed between its commit and its wake only delays, never hangs. */
#define SS_SLEEP_SLICE_NS 100000000LL

typedef int (*ss_ready_fn)(void *ctx);

/* Wait, with the GIL released, until ready(ctx) is true, the deadline passes
 * or a signal handler raises.  Sleepers register in *waiting and sleep on
 * *event.  Returns 1 ready, 0 timed out, -1 with an exception set. */
int ss_wait_until(SegmentObject *seg, ss_ready_fn ready, void *ctx, _Atomic uint32_t *event,
                  _Atomic uint32_t *waiting, const ss_deadline *dl, ss_spin *spin);

/* The other side: after publishing, wake sleepers if any registered. */
static inline void
ss_wake_waiters(_Atomic uint32_t *event, _Atomic uint32_t *waiting)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(waiting, memory_order_relaxed) &&
        atomic_exchange(waiting, 0)) {
        atomic_fetch_add(event, 1);
        ss_futex_wake(event, INT32_MAX);
    }
}

/* Add name -> offset to dict d (module init of Channel and Mailbox).
 * Returns 0 or -1. */
static inline int
ss_add_offset(PyObject *d, const char *name, size_t off)
{
    PyObject *v = PyLong_FromSize_t(off);
    int r = v == NULL ? -1 : PyDict_SetItemString(d, name, v);
    Py_XDECREF(v);
    return r;
}

/* Objects with a header in a segment (object.c). */
char *ss_object_attach_check(ss_state *st, PyObject *segobj, int attached_before,
                             const char *what);
void ss_object_init_header(char *base, uint64_t magic, uint32_t header_size, uint64_t capacity,
                           uint64_t cell_stride);
void ss_object_detach(SegmentObject *seg, _Atomic uint32_t *const *events, int nevents,
                      _Atomic uint32_t *const *lock_words, int nlocks);
/* Validate the common header of a segment.  Returns 0, or -1 with
 * FormatError set.  *ready_out is 0 when the magic is still zero (the creator
 * has not finished). */
int ss_check_common(SegmentObject *seg, uint64_t magic, size_t header_size, const char *what,
                    int *ready_out);


/* ------------------------------------------------------------------------ */
/* Type specs, defined in their own files. */

extern PyType_Spec ss_segment_spec;
extern PyType_Spec ss_pin_spec;
extern PyType_Spec ss_sem_spec;
extern PyType_Spec ss_channel_spec;
extern PyType_Spec ss_mailbox_spec;

/* Module functions, each table in the file of its concept; module.c
 * registers them all. */
extern PyMethodDef ss_boundary_functions[]; /* boundary.c */
extern PyMethodDef ss_shm_functions[];      /* shm.c */
extern PyMethodDef ss_sem_functions[];      /* sem.c */
extern PyMethodDef ss_msg_functions[];      /* msg.c */
extern PyMethodDef ss_key_functions[];      /* keys.c */
extern PyMethodDef ss_lock_functions[];     /* plock.c */

int ss_channel_module_init(PyObject *module);
int ss_mailbox_module_init(PyObject *module);

#endif /* SHMSEM_H */
