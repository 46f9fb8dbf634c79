/* A mutex in shared memory that survives the death of its holder.
 *
 * Why not a robust pthread mutex: glibc keeps its robust-list links *inside*
 * the mutex, so a hostile process that can write the segment could make us
 * follow a pointer of its choosing.  Every field here is a plain number that
 * we validate, never dereference.
 *
 * The owner word holds the holder's identity: its pid, the low 24 bits of its
 * start time (so a recycled pid is not mistaken for the holder) and an 8-bit
 * tag of its PID namespace (a pid from another namespace means nothing here,
 * so such a holder is never declared dead).  A foreign peer may leave the
 * start time or the tag 0, meaning "unknown"; it is then judged by its pid.  A waiter that has waited a
 * slice with the owner unchanged checks whether the holder still lives
 * (kill(pid, 0), then /proc/<pid>/stat for zombies and recycled pids) and, if
 * not, takes the lock over with a compare-and-swap and reports RECOVERED.
 *
 * Waiting is a futex on seq, which every unlock bumps; `waiting` tells the
 * unlocker whether anyone sleeps (Drepper, "Futexes are tricky", mutex 3).
 */
#include "layout.h"

#include <fcntl.h>
#include <stdlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define PLOCK_SPIN_NS 4000LL
#define PLOCK_SLICE_NS 10000000LL /* liveness re-check period while waiting */

static uint64_t self_ident;
static pid_t self_pid;
static uint32_t self_ns_tag;
/* Locks held by threads of this process, counted up *before* the CAS that
 * takes one and down *after* the store that frees it.  An owner word equal to
 * our own identity while this is 0 therefore belongs to this process's image
 * before an exec (same pid, same start time), never to one of our threads
 * between its CAS and its count. */
static _Atomic long held_by_us;

/* CAS the owner word from *expected to me, counted in held_by_us. */
static int
claim(ss_plock *lk, uint64_t *expected, uint64_t me)
{
    atomic_fetch_add(&held_by_us, 1);
    if (atomic_compare_exchange_strong(&lk->owner, expected, me))
        return 1;
    atomic_fetch_sub(&held_by_us, 1);
    return 0;
}

/* Read state and start time from /proc/<pid>/stat.  Returns 0, or -1 if the
 * file cannot be read (no such process, or /proc hidden). */
static int
read_proc_stat(pid_t pid, char *state, unsigned long long *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    /* The command name is in parentheses and may itself contain ") ". */
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ')
        return -1;
    p += 2;
    *state = *p;
    /* After ')' come fields 3.. ; starttime is field 22, i.e. the 20th here. */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return -1;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

static uint32_t
ns_tag(void)
{
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) < 0)
        return 1;
    uint64_t x = (uint64_t)st.st_ino;
    x ^= x >> 32;
    x ^= x >> 16;
    x ^= x >> 8;
    return (uint32_t)(x & 0xff) | 1; /* never 0 */
}

static uint64_t
make_ident(pid_t pid, unsigned long long start, uint32_t tag)
{
    return (uint64_t)(uint32_t)pid | ((uint64_t)(start & 0xffffff) << 32) |
           ((uint64_t)tag << 56);
}

static void
refresh_identity(void)
{
    char state;
    unsigned long long start = 0;
    self_pid = getpid();
    if (read_proc_stat(self_pid, &state, &start) < 0)
        start = 0;
    self_ns_tag = ns_tag();
    self_ident = make_ident(self_pid, start, self_ns_tag);
}

static void
after_fork_child(void)
{
    refresh_identity();
    atomic_store_explicit(&held_by_us, 0, memory_order_relaxed); /* fork happens from Python code, never inside a lock */
}

static pthread_once_t identity_once = PTHREAD_ONCE_INIT;

static void
init_identity(void)
{
    refresh_identity();
    pthread_atfork(NULL, NULL, after_fork_child);
}

uint64_t
ss_self_ident(void)
{
    pthread_once(&identity_once, init_identity);
    return self_ident;
}

/* Threads still running in a process whose /proc/<pid>/stat says zombie: the
 * thread-group leader can exit (pthread_exit) while other threads go on. */
static int
live_threads(pid_t pid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strstr(buf, "\nThreads:");
    return p ? atoi(p + 9) : 0;
}

int
ss_pid_alive(uint64_t ident)
{
    pid_t pid = (pid_t)(uint32_t)(ident & 0xffffffffu);
    uint32_t start = (uint32_t)((ident >> 32) & 0xffffff); /* 0: unknown */
    uint32_t tag = (uint32_t)(ident >> 56);                /* 0: no tag */
    if (pid <= 0)
        return 0;
    ss_self_ident();
    if (tag != 0 && tag != self_ns_tag)
        return 1;               /* another PID namespace: cannot judge, assume alive */
    if (pid == self_pid) /* another thread of ours, or a dead predecessor with our pid */
        return ident == self_ident && atomic_load(&held_by_us) > 0;
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 0;
    char state;
    unsigned long long started;
    if (read_proc_stat(pid, &state, &started) < 0)
        return 1;               /* cannot see it (hidepid): assume alive */
    if ((state == 'Z' || state == 'X') && live_threads(pid) <= 1)
        return 0;               /* killed, not yet reaped */
    if (start != 0 && (started & 0xffffff) != start)
        return 0;               /* the pid was recycled */
    return 1;
}

int
ss_plock_try(ss_plock *lk)
{
    uint64_t expected = 0;
    return claim(lk, &expected, ss_self_ident()) ? SS_LOCK_OK : SS_LOCK_TIMEOUT;
}

void
ss_plock_release(ss_plock *lk)
{
    atomic_exchange(&lk->owner, 0);
    atomic_fetch_sub(&held_by_us, 1);
    atomic_fetch_add(&lk->seq, 1);
    if (atomic_load(&lk->waiting) && atomic_exchange(&lk->waiting, 0))
        ss_futex_wake(&lk->seq, 1);
}

int
ss_plock_acquire(ss_plock *lk, const ss_deadline *dl, SegmentObject *seg)
{
    uint64_t me = ss_self_ident();
    int result = SS_LOCK_TIMEOUT, slept = 0, async_err = 0;
    uint64_t watched = 0;      /* owner value we are timing */
    int64_t watched_since = 0;

    PyThreadState *ts = PyEval_SaveThread();
    int64_t spin_until = ss_now_ns() + PLOCK_SPIN_NS;
    for (;;) {
        uint64_t cur = atomic_load(&lk->owner);
        if (cur == 0) {
            if (claim(lk, &cur, me)) {
                /* After sleeping, others may sleep too: make our unlock wake one. */
                if (slept)
                    atomic_store(&lk->waiting, 1);
                result = SS_LOCK_OK;
                break;
            }
            continue;
        }
        int64_t now = ss_now_ns();
        if (!dl->infinite && now >= dl->deadline_ns)
            break;
        if (now < spin_until) {
            ss_cpu_relax();
            continue;
        }
        if (cur != watched) {
            watched = cur;
            watched_since = now;
        } else if (now - watched_since >= PLOCK_SLICE_NS) {
            watched_since = now;
            if (!ss_pid_alive(cur) && claim(lk, &cur, me)) {
                atomic_store(&lk->waiting, 1); /* sleepers may have lost their wake-up */
                result = SS_LOCK_RECOVERED;
                break;
            }
            continue;
        }
        uint32_t s = atomic_load(&lk->seq);
        atomic_store(&lk->waiting, 1);
        if (atomic_load(&lk->owner) != cur)
            continue;
        int64_t wait = PLOCK_SLICE_NS;
        if (!dl->infinite && dl->deadline_ns - now < wait)
            wait = dl->deadline_ns - now;
        slept = 1;
        ss_futex_wait(&lk->seq, s, wait);
        /* Run signal handlers after every sleep, not only on EINTR: a signal
         * that arrived while we spun interrupted nothing. */
        PyEval_RestoreThread(ts);
        async_err = PyErr_CheckSignals();
        if (!async_err && seg->closing) {
            ss_segment_raise(seg, "closed", "the segment was detached while waiting for a lock");
            async_err = -1;
        }
        if (async_err)
            return SS_LOCK_ERROR;
        ts = PyEval_SaveThread();
    }
    PyEval_RestoreThread(ts);
    return result;
}

/* _lock_pair_ns(n, kind): the mean cost in nanoseconds of n uncontended
 * lock/unlock pairs, with the GIL held throughout.  kind 0 is this file's
 * process lock; kind 1 is glibc's robust process-shared pthread mutex, the
 * reference it is compared with.  For benchmarks/lock.py. */
PyObject *
ss_lock_pair_ns(PyObject *module, PyObject *args)
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
        if (ss_plock_try(&lock) != SS_LOCK_OK) {
            PyErr_SetString(PyExc_RuntimeError, "the benchmark lock is held");
            return NULL;
        }
        ss_plock_release(&lock);
    }
    return PyFloat_FromDouble((double)(ss_now_ns() - start) / (double)n);
}
