/* A mutex in shared memory that the kernel releases when its holder dies.
 *
 * The lock word is a robust futex (Linux's Documentation/locking/
 * robust-futexes.rst, and the protocol of glibc's robust process-shared
 * mutexes): 0 when free, otherwise the holder's thread id as the holder's
 * own PID namespace numbers it, with FUTEX_WAITERS set once someone may be
 * asleep on it.  While it holds the lock, the holder keeps the lock's node
 * on its thread's robust list, the list the C library registers with the
 * kernel (set_robust_list).  When a thread exits or execs, the kernel walks
 * that list and, for each word still holding the thread's id, sets
 * FUTEX_OWNER_DIED, clears the id and wakes a waiter.  Whether a holder is
 * alive is therefore never guessed from pids or /proc: the kernel says so,
 * whatever PID namespace the holder lives in, after fork, exec or pid reuse.
 *
 * Hostile peers.  The node (the `links` field of the lock) lies in shared
 * memory, where any process that can attach the segment may write it.  So
 * this file never reads a pointer from shared memory: the links of our own
 * nodes are only written (their successors are kept in thread-local
 * memory), and the only pointers followed are those of the C library's
 * entries, which live in its private memory.  To keep that possible, our
 * nodes always sit at the tail of the list, behind every entry of the C
 * library (which inserts at the head), so the C library never reads them.
 * A peer that scribbles over a node can at most make the kernel skip a
 * lock when we die: then that lock stays held, as a lock word it scribbles
 * over would.
 *
 * The one window the kernel leaves open is the one glibc has: between the
 * store that frees the word and the clearing of list_op_pending, a thread
 * killed while another thread, in another PID namespace and with the same
 * numeric id, has just taken the lock would have the kernel mark that live
 * holder dead.  It lasts a few instructions; docs/protocol.md says so.
 */
#include "layout.h"

#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PLOCK_SPIN_NS 4000LL
/* A sleeper wakes at least this often to run signal handlers and notice a
 * close() by another thread.  A dead holder is reported by the kernel at
 * once and needs no polling. */
#define PLOCK_SLICE_NS 100000000LL
/* Locks one thread may hold at once.  shmsem holds one at a time. */
#define PLOCK_MAX_HELD 8
#define LINK_FAILED                                                                   \
    "shmsem: cannot put the lock on this thread's robust list (it holds too many "   \
    "process locks, or its C library's list is damaged)"
/* The kernel stops walking a robust list after this many entries. */
#define ROBUST_LIST_LIMIT 2048

/* This thread's robust list and the nodes of ours on it, in list order. */
struct ss_lock_thread {
    struct robust_list_head *head;   /* NULL until set up in this thread */
    long offset;                     /* futex word = node + offset */
    uint32_t tid;
    int nheld;
    struct robust_list *held[PLOCK_MAX_HELD];
    struct robust_list_head own;     /* registered when the C library had none */
};
typedef struct ss_lock_thread robust_tls;

static _Thread_local robust_tls tls_state;

/* Reaching thread-local storage from a dlopen'ed module costs a call to
 * __tls_get_addr, which the compiler would repeat after every barrier:
 * fetch the address once per lock, through a call it cannot redo, and hand
 * it to the unlock (ss_lock_thread). */
__attribute__((noinline)) static robust_tls *
tls_self(void)
{
    return &tls_state;
}

static void
after_fork_child(void)
{
    /* The child's only thread has a new id and holds nothing; the C library
     * has given it a fresh, empty list (or none, which we then register). */
    tls_state.head = NULL;
    tls_state.nheld = 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void
register_atfork(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
}

/* Find this thread's robust list, registering one if the C library has
 * not.  Returns 0, or -1 with errno set (ENOSYS: no robust futexes;
 * EPROTO: a list whose geometry the lock layout cannot hold). */
static int
robust_setup(robust_tls *tls)
{
    pthread_once(&atfork_once, register_atfork);
    struct robust_list_head *head = NULL;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, 0, &head, &len) != 0)
        return -1;
    if (head != NULL && len != sizeof *head) {
        errno = EPROTO; /* a list head of a layout this file does not know */
        return -1;
    }
    if (head == NULL) {
        tls->own.list.next = &tls->own.list;
        tls->own.futex_offset = -(long)SS_PLOCK_NODE;
        tls->own.list_op_pending = NULL;
        if (syscall(SYS_set_robust_list, &tls->own, sizeof tls->own) != 0)
            return -1;
        head = &tls->own;
    }
    long node_at = -head->futex_offset; /* where the node is, from the word */
    /* The node and the prev pointer before it (which glibc writes when it
     * inserts an entry of its own in front of ours) must lie inside the
     * lock's links area. */
    if (node_at < SS_PLOCK_LINKS + 8 || node_at + 8 > SS_PLOCK_LINKS_END || (node_at & 7)) {
        errno = EPROTO;
        return -1;
    }
    tls->offset = head->futex_offset;
    tls->tid = (uint32_t)syscall(SYS_gettid);
    tls->nheld = 0;
    tls->head = head;
    return 0;
}

/* This thread's robust-list state, set up on first use; NULL with an
 * exception set when it cannot be. */
static robust_tls *
robust_ready(void)
{
    robust_tls *tls = tls_self();
    if (tls->head != NULL)
        return tls;
    if (robust_setup(tls) == 0)
        return tls;
    if (errno == EPROTO)
        PyErr_SetString(PyExc_RuntimeError,
                        "shmsem: this C library's robust-list layout does not fit the lock "
                        "(docs/protocol.md, section 2)");
    else
        PyErr_SetFromErrno(PyExc_OSError);
    return NULL;
}

static inline struct robust_list *
node_of(robust_tls *tls, ss_plock *lk)
{
    return (struct robust_list *)((char *)&lk->word - tls->offset);
}

static inline void
set_pending(robust_tls *tls, struct robust_list *node)
{
    /* The kernel reads it only when this thread dies: a compiler barrier
     * orders it against the lock operations around it. */
    atomic_signal_fence(memory_order_seq_cst);
    tls->head->list_op_pending = node;
    atomic_signal_fence(memory_order_seq_cst);
}

/* The entry whose next is `target` (or the end of the list when target is
 * NULL), following only the C library's entries.  NULL if not found. */
static struct robust_list *
foreign_pred(robust_tls *tls, struct robust_list *target)
{
    struct robust_list *end = &tls->head->list, *e = end;
    for (int i = 0; i < ROBUST_LIST_LIMIT; i++) {
        struct robust_list *nx = (struct robust_list *)((uintptr_t)e->next & ~(uintptr_t)1);
        if (nx == target || (target == NULL && nx == end))
            return e;
        if (nx == end || nx == NULL)
            return NULL;
        e = nx;
    }
    return NULL;
}

/* Put node at the tail of the list: behind the C library's entries and
 * behind our other nodes.  Returns 0, or -1 when the list is unusable. */
static int
link_node(robust_tls *tls, struct robust_list *node)
{
    struct robust_list *pred =
        tls->nheld > 0 ? tls->held[tls->nheld - 1] : foreign_pred(tls, NULL);
    if (pred == NULL || tls->nheld == PLOCK_MAX_HELD)
        return -1;
    node->next = &tls->head->list;
    atomic_signal_fence(memory_order_seq_cst);
    pred->next = node;
    tls->held[tls->nheld++] = node;
    return 0;
}

static void
unlink_node(robust_tls *tls, struct robust_list *node)
{
    int i = tls->nheld - 1;
    while (i >= 0 && tls->held[i] != node)
        i--;
    if (i < 0)
        return; /* not ours (never linked) */
    struct robust_list *succ = i + 1 < tls->nheld ? tls->held[i + 1] : &tls->head->list;
    struct robust_list *pred = i > 0 ? tls->held[i - 1] : foreign_pred(tls, node);
    if (pred != NULL)
        pred->next = succ;
    atomic_signal_fence(memory_order_seq_cst);
    for (; i + 1 < tls->nheld; i++)
        tls->held[i] = tls->held[i + 1];
    tls->nheld--;
}

/* CAS the word from *expected to desired and, on success, put the node on
 * our list; list_op_pending covers the instant between the two. */
static int
claim(robust_tls *tls, ss_plock *lk, uint32_t *expected, uint32_t desired)
{
    struct robust_list *node = node_of(tls, lk);
    set_pending(tls, node);
    int won = atomic_compare_exchange_strong(&lk->word, expected, desired);
    if (won && link_node(tls, node) < 0) {
        /* No room on the list, or the C library's part of it cannot be
         * walked: give the lock back rather than hold it unprotected. */
        atomic_store(&lk->word, *expected);
        ss_futex_wake(&lk->word, 1);
        won = -1;
    }
    set_pending(tls, NULL);
    return won;
}

int
ss_plock_try(ss_plock *lk, ss_lock_thread **me)
{
    robust_tls *tls = robust_ready();
    if (tls == NULL)
        return SS_LOCK_ERROR;
    uint32_t expected = 0;
    int won = claim(tls, lk, &expected, tls->tid);
    if (won < 0) {
        PyErr_SetString(PyExc_RuntimeError, LINK_FAILED);
        return SS_LOCK_ERROR;
    }
    *me = tls;
    return won ? SS_LOCK_OK : SS_LOCK_TIMEOUT;
}

void
ss_plock_release(ss_plock *lk, ss_lock_thread *tls)
{
    struct robust_list *node = node_of(tls, lk);
    set_pending(tls, node);
    unlink_node(tls, node);
    atomic_signal_fence(memory_order_seq_cst);
    uint32_t old = atomic_exchange(&lk->word, 0);
    if (old & FUTEX_WAITERS)
        ss_futex_wake(&lk->word, 1);
    set_pending(tls, NULL);
}

/* A waiter that was woken but leaves without the lock passes the wake-up
 * on, so that the other sleepers do not wait for the next unlock.  The word
 * tells nothing here: the unlock that woke us stored 0, clearing
 * FUTEX_WAITERS, and only a waiter that takes the lock sets it again. */
static void
pass_wake_on(ss_plock *lk)
{
    ss_futex_wake(&lk->word, 1);
}

int
ss_plock_acquire(ss_plock *lk, const ss_deadline *dl, SegmentObject *seg, ss_lock_thread **out)
{
    robust_tls *tls = robust_ready();
    if (tls == NULL)
        return SS_LOCK_ERROR;
    const uint32_t me = tls->tid;
    uint32_t waiters = 0; /* FUTEX_WAITERS once we have slept: others may sleep too */
    int result, woken = 0;

    PyThreadState *ts = PyEval_SaveThread();
    /* The spin ignores the deadline: a zero timeout means "do not sleep",
     * not "give up on a lock that is about to be free". */
    int64_t spin_until = ss_now_ns() + PLOCK_SPIN_NS;
    for (;;) {
        uint32_t v = atomic_load(&lk->word);
        if ((v & FUTEX_TID_MASK) == 0) {
            /* Free, or its holder died (FUTEX_OWNER_DIED). */
            int won = claim(tls, lk, &v, me | waiters | (v & FUTEX_WAITERS));
            if (won > 0) {
                result = (v & FUTEX_OWNER_DIED) ? SS_LOCK_RECOVERED : SS_LOCK_OK;
                break;
            }
            if (won < 0) {
                PyEval_RestoreThread(ts);
                PyErr_SetString(PyExc_RuntimeError, LINK_FAILED);
                return SS_LOCK_ERROR;
            }
            continue;
        }
        int64_t now = ss_now_ns();
        if (now < spin_until) {
            ss_cpu_relax();
            continue;
        }
        if (!dl->infinite && now >= dl->deadline_ns) {
            result = SS_LOCK_TIMEOUT;
            break;
        }
        if (!(v & FUTEX_WAITERS)) {
            if (!atomic_compare_exchange_strong(&lk->word, &v, v | FUTEX_WAITERS))
                continue;
            v |= FUTEX_WAITERS;
        }
        int64_t wait = PLOCK_SLICE_NS;
        if (!dl->infinite && dl->deadline_ns - now < wait)
            wait = dl->deadline_ns - now;
        woken = ss_futex_wait(&lk->word, v, wait) == 0;
        waiters = FUTEX_WAITERS;
        /* Run signal handlers after every sleep, not only on EINTR: a
         * signal that arrived while we spun interrupted nothing. */
        PyEval_RestoreThread(ts);
        int err = PyErr_CheckSignals();
        if (!err && seg->closing) {
            ss_segment_raise(seg, "closed", "the segment was detached while waiting for a lock");
            err = -1;
        }
        if (err) {
            if (woken)
                pass_wake_on(lk);
            return SS_LOCK_ERROR;
        }
        ts = PyEval_SaveThread();
    }
    if (result == SS_LOCK_TIMEOUT && woken)
        pass_wake_on(lk);
    PyEval_RestoreThread(ts);
    if (result == SS_LOCK_RECOVERED)
        atomic_fetch_add_explicit(&lk->recoveries, 1, memory_order_relaxed);
    *out = tls;
    return result;
}

uint32_t
ss_plock_holder(ss_plock *lk)
{
    return atomic_load_explicit(&lk->word, memory_order_relaxed) & FUTEX_TID_MASK;
}

/* _lock_pair_ns(n, kind): the mean cost in nanoseconds of n uncontended
 * lock/unlock pairs, with the GIL held throughout.  kind 0 is this file's
 * process lock; kind 1 is glibc's robust process-shared pthread mutex, the
 * reference it is compared with.  For benchmarks/lock.py. */
static PyObject *
lock_pair_ns(PyObject *module, PyObject *args)
{
    long n, kind = 0;
    if (!PyArg_ParseTuple(args, "l|l:_lock_pair_ns", &n, &kind))
        return NULL;
    if (n <= 0 || kind < 0 || kind > 1) {
        PyErr_SetString(PyExc_ValueError, "n must be positive and kind 0 or 1");
        return NULL;
    }
    static ss_plock lock __attribute__((aligned(64)));
    static pthread_mutex_t mutex;
    static int mutex_ready;
    if (kind == 1 && !mutex_ready) {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&mutex, &a);
        pthread_mutexattr_destroy(&a);
        mutex_ready = 1;
    }
    int64_t start = ss_now_ns();
    for (long i = 0; i < n; i++) {
        if (kind == 1) {
            pthread_mutex_lock(&mutex);
            pthread_mutex_unlock(&mutex);
            continue;
        }
        ss_lock_thread *me;
        if (ss_plock_try(&lock, &me) != SS_LOCK_OK) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "the benchmark lock is held");
            return NULL;
        }
        ss_plock_release(&lock, me);
    }
    return PyFloat_FromDouble((double)(ss_now_ns() - start) / (double)n);
}

PyMethodDef ss_lock_functions[] = {
    {"_lock_pair_ns", lock_pair_ns, METH_VARARGS,
     "_lock_pair_ns(n, kind=0, /)\n--\n\n"
     "Mean nanoseconds of n uncontended lock/unlock pairs (GIL held): kind 0 is\n"
     "the process lock of Channel and Mailbox, kind 1 glibc's robust\n"
     "process-shared pthread mutex.  For benchmarks/lock.py."},
    {NULL, NULL, 0, NULL},
};
