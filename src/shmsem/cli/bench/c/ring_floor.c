/* C floor for a two-process copying queue: the copies, the cache traffic
 * between two CPUs, and as little else as possible.
 *
 *   ring_floor MESSAGE_SIZE RING_CAPACITY ITERATIONS [CPU_PRODUCER CPU_CONSUMER]
 *
 * A forked consumer and the producer share an anonymous MAP_SHARED ring of
 * RING_CAPACITY bytes with a head and a tail counter on separate cache lines
 * (a single-producer single-consumer queue: no locks).  The producer copies
 * each message in at tail (records of 8 + MESSAGE_SIZE rounded up to 8 bytes,
 * wrapping in two pieces, as a Channel record does) and publishes tail with a
 * release store; the consumer copies it out into a freshly malloc'ed buffer,
 * reads one byte of it, frees it, and publishes head.  A side that must wait
 * spins with the CPU's pause instruction and calls sched_yield() every 256
 * rounds (so that a waiter never sleeps: no futex, no wake-up cost).  The
 * processes are pinned only when the two CPUs are given.  Prints the CLOCK_MONOTONIC nanoseconds from the
 * producer's first timed copy to the consumer's last, after a warm-up that
 * fills the ring once (timing starts with it empty again).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    _Alignas(64) _Atomic uint64_t tail;
    _Alignas(64) _Atomic uint64_t head;
    _Alignas(64) _Atomic long long t_end;
    char ring[];
} shared_t;

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void
relax(unsigned *spins)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((++*spins & 255) == 0)
        sched_yield();
}

static size_t size, cap, rec;

static void
pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) {
        perror("ring_floor: sched_setaffinity");
        exit(1);
    }
}

static void
copy_in(shared_t *s, uint64_t at, const char *from)
{
    size_t p = at % cap, first = cap - p < size ? cap - p : size;
    memcpy(s->ring + p, from, first);
    memcpy(s->ring, from + first, size - first);
}

static void
copy_out(shared_t *s, uint64_t at, char *to)
{
    size_t p = at % cap, first = cap - p < size ? cap - p : size;
    memcpy(to, s->ring + p, first);
    memcpy(to + first, s->ring, size - first);
}

int
main(int argc, char **argv)
{
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: ring_floor MESSAGE_SIZE RING_CAPACITY ITERATIONS "
                        "[CPU_PRODUCER CPU_CONSUMER]\n");
        return 2;
    }
    int cpu_p = argc == 6 ? atoi(argv[4]) : -1, cpu_c = argc == 6 ? atoi(argv[5]) : -1;
    size = (size_t)atol(argv[1]);
    cap = (size_t)atol(argv[2]) & ~(size_t)7;
    long n = atol(argv[3]);
    rec = 8 + ((size + 7) & ~(size_t)7);
    if (size < 1 || cap < rec || n < 1) {
        fprintf(stderr, "ring_floor: bad sizes\n");
        return 2;
    }
    long warm = (long)(cap / rec) + 4, total = warm + n;
    shared_t *s = mmap(NULL, sizeof(shared_t) + cap, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) {
        perror("ring_floor: mmap");
        return 1;
    }
    memset(s->ring, 0, cap);

    pid_t pid = fork();
    if (pid < 0) {
        perror("ring_floor: fork");
        return 1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        pin(cpu_c);
        unsigned sink = 0, spins = 0;
        uint64_t h = 0;
        for (long i = 0; i < total; i++) {
            while (atomic_load_explicit(&s->tail, memory_order_acquire) == h)
                relax(&spins);
            char *out = malloc(size);
            if (out == NULL)
                _exit(1);
            copy_out(s, h + 8, out);
            sink += (unsigned char)out[size - 1];
            free(out);
            h += rec;
            atomic_store_explicit(&s->head, h, memory_order_release);
        }
        atomic_store(&s->t_end, now_ns());
        _exit(sink == 0xdeadbeef);
    }

    pin(cpu_p);
    char *src = malloc(size);
    if (src == NULL) {
        perror("ring_floor: malloc");
        kill(pid, SIGKILL);
        return 1;
    }
    for (size_t i = 0; i < size; i++)
        src[i] = (char)(i * 131u);
    long long t0 = 0;
    unsigned spins = 0;
    uint64_t t = 0;
    for (long i = 0; i < total; i++) {
        if (i == warm) {
            /* Start timing with an empty ring, as the Python runs do. */
            while (atomic_load_explicit(&s->head, memory_order_acquire) != t)
                relax(&spins);
            t0 = now_ns();
        }
        while (cap - (t - atomic_load_explicit(&s->head, memory_order_acquire)) < rec)
            relax(&spins);
        copy_in(s, t + 8, src);
        t += rec;
        atomic_store_explicit(&s->tail, t, memory_order_release);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "ring_floor: consumer failed\n");
        return 1;
    }
    printf("%lld\n", atomic_load(&s->t_end) - t0);
    return 0;
}
