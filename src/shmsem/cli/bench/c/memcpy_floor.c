/* C floor for large messages: the copies a copying queue must make, and
 * nothing else.
 *
 *   memcpy_floor MESSAGE_SIZE RING_CAPACITY ITERATIONS
 *
 * One process, one thread.  For each message: copy it from a source buffer
 * into a ring of RING_CAPACITY bytes (at a position that advances by
 * 8 + MESSAGE_SIZE rounded up to 8, and wraps in two pieces, exactly as a
 * Channel record does), then copy it back out of the ring into a freshly
 * malloc'ed buffer (as get_bytes() copies into a new bytes object), read one
 * byte of it, and free it.  No locks, no atomics, no other process.  Prints
 * the elapsed CLOCK_MONOTONIC nanoseconds of ITERATIONS messages, after a
 * warm-up.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static size_t size, cap, rec, pos;
static char *src, *ring;
static volatile unsigned sink;

static void
ring_copy(char *dst, const char *from, size_t at, size_t n, int into)
{
    size_t p = at % cap, first = cap - p < n ? cap - p : n;
    if (into) {
        memcpy(ring + p, from, first);
        memcpy(ring, from + first, n - first);
    } else {
        memcpy(dst, ring + p, first);
        memcpy(dst + first, ring, n - first);
    }
}

static int
messages(long n)
{
    for (long i = 0; i < n; i++) {
        ring_copy(NULL, src, pos + 8, size, 1);
        char *out = malloc(size ? size : 1);
        if (out == NULL)
            return -1;
        ring_copy(out, NULL, pos + 8, size, 0);
        sink += (unsigned char)out[size ? size - 1 : 0];
        free(out);
        pos += rec;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: memcpy_floor MESSAGE_SIZE RING_CAPACITY ITERATIONS\n");
        return 2;
    }
    size = (size_t)atol(argv[1]);
    cap = (size_t)atol(argv[2]) & ~(size_t)7;
    long n = atol(argv[3]);
    rec = 8 + ((size + 7) & ~(size_t)7);
    if (cap < rec) {
        fprintf(stderr, "memcpy_floor: a ring of %zu bytes cannot hold a %zu-byte record\n",
                cap, rec);
        return 2;
    }
    src = malloc(size ? size : 1);
    ring = malloc(cap);
    if (src == NULL || ring == NULL) {
        perror("memcpy_floor: malloc");
        return 1;
    }
    for (size_t i = 0; i < size; i++)
        src[i] = (char)(i * 131u);
    memset(ring, 0, cap);
    if (messages(cap / rec + 4) < 0) /* warm-up: touch the whole ring */
        return 1;
    long long t0 = now_ns();
    if (messages(n) < 0) {
        perror("memcpy_floor: malloc");
        return 1;
    }
    long long t1 = now_ns();
    printf("%lld\n", t1 - t0);
    return 0;
}
