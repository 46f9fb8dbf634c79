/* C floor for the two-process semaphore ping-pong.
 *
 *   sem_pingpong SEMID ITERATIONS CPU_PARENT CPU_CHILD
 *
 * SEMID is a 2-member set whose values are both 0.  The parent raises member 0
 * ("ping") and waits on member 1 ("pong"); a forked child does the reverse.
 * Plain semop, no flags, as sysv_ipc and a blocking shmsem wait do.  A CPU of
 * -1 leaves that process unpinned.  The set belongs to the caller, which
 * removes it: a child left waiting then gets EIDRM and exits.  Prints the
 * elapsed CLOCK_MONOTONIC nanoseconds of ITERATIONS round trips, after a
 * warm-up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/wait.h>

#define WARMUP 1000L

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void
pin(int cpu, const char *who)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) {
        fprintf(stderr, "sem_pingpong: %s: sched_setaffinity(cpu %d): %s\n", who, cpu,
                strerror(errno));
        exit(1);
    }
}

static int
op(int semid, unsigned short num, short delta)
{
    struct sembuf b = {num, delta, 0};
    int rc;
    do {
        rc = semop(semid, &b, 1);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

int
main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: sem_pingpong SEMID ITERATIONS CPU_PARENT CPU_CHILD\n");
        return 2;
    }
    int semid = atoi(argv[1]);
    long n = atol(argv[2]);
    int cpu_parent = atoi(argv[3]), cpu_child = atoi(argv[4]);

    pid_t pid = fork();
    if (pid < 0) {
        perror("sem_pingpong: fork");
        return 1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        pin(cpu_child, "child");
        for (long i = 0; i < WARMUP + n; i++)
            if (op(semid, 0, -1) < 0 || op(semid, 1, 1) < 0)
                _exit(1);
        _exit(0);
    }

    pin(cpu_parent, "parent");
    long long t0 = 0;
    for (long i = 0; i < WARMUP + n; i++) {
        if (i == WARMUP)
            t0 = now_ns();
        if (op(semid, 0, 1) < 0 || op(semid, 1, -1) < 0) {
            fprintf(stderr, "sem_pingpong: semop(id=%d): %s\n", semid, strerror(errno));
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return 1;
        }
    }
    long long t1 = now_ns();
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "sem_pingpong: child failed\n");
        return 1;
    }
    printf("%lld\n", t1 - t0);
    return 0;
}
