/* C floor for the uncontended semaphore pair: semop(-1) then semop(+1) on
 * member 0 of an existing set, in a tight loop.
 *
 *   sem_pair SEMID ITERATIONS MODE
 *
 * MODE "nowait" gives the decrement IPC_NOWAIT, as shmsem's acquire() does on
 * its first attempt; "plain" uses flags 0, as sysv_ipc does.  The set belongs
 * to the caller, which creates it with value >= 1 and removes it.  Prints the
 * elapsed CLOCK_MONOTONIC nanoseconds of the timed loop (after a warm-up).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/sem.h>

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int
pairs(int semid, struct sembuf *down, struct sembuf *up, long n)
{
    for (long i = 0; i < n; i++) {
        if (semop(semid, down, 1) < 0 || semop(semid, up, 1) < 0) {
            fprintf(stderr, "sem_pair: semop(id=%d): %s\n", semid, strerror(errno));
            return -1;
        }
    }
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[3], "nowait") != 0 && strcmp(argv[3], "plain") != 0)) {
        fprintf(stderr, "usage: sem_pair SEMID ITERATIONS nowait|plain\n");
        return 2;
    }
    int semid = atoi(argv[1]);
    long n = atol(argv[2]);
    short down_flags = strcmp(argv[3], "nowait") == 0 ? IPC_NOWAIT : 0;
    struct sembuf down = {0, -1, down_flags};
    struct sembuf up = {0, 1, 0};

    if (pairs(semid, &down, &up, n < 1000 ? n : 1000) < 0)
        return 1;
    long long t0 = now_ns();
    if (pairs(semid, &down, &up, n) < 0)
        return 1;
    long long t1 = now_ns();
    printf("%lld\n", t1 - t0);
    return 0;
}
