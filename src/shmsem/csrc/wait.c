/* The wait engine: futex sleeps and wake-ups on words in shared memory, and
 * the adaptive spin-then-sleep that Channel and Mailbox waits use. */
#include "layout.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Futexes. */

int
ss_futex_wait(_Atomic uint32_t *addr, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0 && timeout_ns != INT64_MAX) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tsp = &ts;
    }
    return (int)syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, expected, tsp, NULL, 0);
}

void
ss_futex_wake(_Atomic uint32_t *addr, int n)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

int
ss_sleep_ns(int64_t ns)
{
    if (ns <= 0)
        return 0;
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    return nanosleep(&ts, NULL);
}

static int ncpus_allowed(void);

/* Spin (GIL released) until ready, within the adaptive budget and the
 * deadline.  The peer is probably busy producing or consuming right now,
 * and a cache-line hand-off costs far less than a scheduler wake-up; when
 * the peer can only be on our CPU, yield to it instead.  Returns whether it
 * became ready, and adapts the budget: twice what a success took, halved
 * after a failure. */
static int
spin_until_ready(ss_ready_fn ready, void *ctx, const ss_deadline *dl, ss_spin *spin)
{
    int single_cpu = ncpus_allowed() <= 1;
    int64_t start = ss_now_ns();
    int64_t budget = spin->spin_ns;
    int64_t left = ss_remaining_ns(dl);
    if (left < budget)
        budget = left;
    for (unsigned i = 0;; i++) {
        if (ready(ctx)) {
            int64_t want = 2 * (ss_now_ns() - start);
            if (want > spin->spin_ns)
                spin->spin_ns = want > SS_SPIN_MAX_NS ? SS_SPIN_MAX_NS : want;
            return 1;
        }
        if (single_cpu || (i & 31) == 31) {
            sched_yield();
        } else {
            for (int k = 0; k < 8; k++)
                ss_cpu_relax();
        }
        if ((i & 7) == 7 && ss_now_ns() - start >= budget)
            break;
    }
    spin->spin_ns /= 2;
    if (spin->spin_ns < SS_SPIN_MIN_NS)
        spin->spin_ns = SS_SPIN_MIN_NS;
    return 0;
}

/* One sleep (GIL released), registered in `waiting`: 1 ready, 0 the
 * deadline passed, 2 woken or slice over (check signals and go again).
 * close() by another thread marks closing before it bumps the event: if our
 * snapshot e is the bumped value we see closing here, else the futex_wait
 * returns at once.  (closing is a plain int written under the GIL.) */
static int
sleep_once(ss_ready_fn ready, void *ctx, _Atomic uint32_t *event, _Atomic uint32_t *waiting,
           const int *closing, const ss_deadline *dl)
{
    uint32_t e = atomic_load(event);
    atomic_store(waiting, 1);
    atomic_thread_fence(memory_order_seq_cst);
    if (ready(ctx))
        return 1;
    if (__atomic_load_n(closing, __ATOMIC_ACQUIRE))
        return 2;
    int64_t slice = SS_SLEEP_SLICE_NS;
    if (!dl->infinite) {
        int64_t rem = ss_remaining_ns(dl);
        if (rem == 0)
            return 0;
        if (rem < slice)
            slice = rem;
    }
    ss_futex_wait(event, e, slice);
    return ready(ctx) ? 1 : 2;
}

int
ss_wait_until(SegmentObject *seg, ss_ready_fn ready, void *ctx, _Atomic uint32_t *event,
              _Atomic uint32_t *waiting, const ss_deadline *dl, ss_spin *spin)
{
    if (ready(ctx))
        return 1;
    if (!dl->infinite && ss_remaining_ns(dl) == 0)
        return 0;
    /* The flag close() sets, read without the GIL: taken here, where
     * touching the object is allowed (the caller keeps seg alive). */
    const int *closing = &seg->closing;
    PyThreadState *ts = PyEval_SaveThread();
    int got = spin_until_ready(ready, ctx, dl, spin);
    PyEval_RestoreThread(ts);
    if (got)
        return 1;

    /* Sleep in bounded slices.  Signal handlers run after every slice and
     * every wake, not only after EINTR: a signal that arrived while we were
     * spinning interrupted nothing. */
    int result;
    for (;;) {
        if (PyErr_CheckSignals() < 0) {
            result = -1;
            break;
        }
        if (seg->closing) {
            ss_segment_raise(seg, "closed", "the segment was detached while waiting");
            result = -1;
            break;
        }
        ts = PyEval_SaveThread();
        result = sleep_once(ready, ctx, event, waiting, closing, dl);
        PyEval_RestoreThread(ts);
        if (result != 2)
            break;
    }
    /* We registered, and leave unwoken (ready on our own re-check, timed
     * out, interrupted): `waiting` may stay 1 with nobody asleep, and then
     * every publish on the other side pays a futex wake for nobody.  We
     * cannot tell whether other sleepers, in any process, registered too,
     * so clear it the way the other side does: clear, bump the event, wake
     * them all.  Each one re-registers before it sleeps again (protocol.md
     * 3.5 steps 2-4), so no wake-up is lost; if nobody sleeps, this is the
     * one wake the next publish would have made.  (The first pass of the
     * loop may fail before registering; a wake then is harmless.) */
    ss_wake_waiters(event, waiting);
    return result;
}

/* Number of CPUs this process may run on, refreshed now and then because
 * affinity can change at run time. */
static int
ncpus_allowed(void)
{
    static _Thread_local int cached = 0;
    static _Thread_local unsigned calls = 0;
    if (cached == 0 || (++calls & 1023) == 0) {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0)
            cached = CPU_COUNT(&set);
        else
            cached = 2;
        if (cached < 1)
            cached = 1;
    }
    return cached;
}

