/*
 * channel_reader: a foreign peer of shmsem's Channel, written from
 * docs/protocol.md alone (sections 1, 2 and 3), for tests/test_protocol_c.py.
 * It does not include or copy anything from shmsem's C sources; every step
 * below names the section of the document it follows.
 *
 * Usage:
 *   read SHMID N [TIMEOUT_S]   take N messages (3.4), waiting for data (3.5);
 *                              print "<kind> <length> <hex payload>" for each
 *   write SHMID [TIMEOUT_S]    put one kind-1 record per stdin line (hex), one
 *                              at a time (3.3), waiting for room (3.5)
 *   write-batch SHMID          put all stdin lines as one batch (one commit)
 *   hold SHMID producer|consumer IDENT
 *                              take that lock with identity IDENT (full; or
 *                              with parts left 0, "unknown": bare = the pid
 *                              alone, tagonly = no start time, startonly = no
 *                              namespace tag), print "held", sleep until killed
 *   create CAPACITY            create a private Channel segment (section 1);
 *                              print its shmid
 *   check SHMID                validate the header only (section 1)
 *   ident                      print this process's identity (section 2) in hex
 *
 * Lock recoveries are reported on stderr as "recovered <side> from <owner>".
 *
 * Exit codes: 0 ok; 1 a syscall failed; 2 usage; 3 the header is refused
 * (section 1); 4 the channel is corrupt (3.3/3.4); 5 timed out.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXIT_SYSCALL 1
#define EXIT_USAGE 2
#define EXIT_REFUSED 3
#define EXIT_CORRUPT 4
#define EXIT_TIMEOUT 5

/* Section 1: "SHMSEMCH" as 8 ASCII bytes, loaded as a little-endian u64 */
static uint64_t magic_channel(void)
{
    uint64_t m;
    memcpy(&m, "SHMSEMCH", 8);
    return m;
}
#define VERSION 1
#define CH_HEADER_SIZE 256

/* Section 3.1 */
#define OFF_PROD_LOCK 64
#define OFF_TAIL 80
#define OFF_PUT_COUNT 88
#define OFF_DATA_EVENT 96
#define OFF_CONS_LOCK 128
#define OFF_HEAD 144
#define OFF_GET_COUNT 152
#define OFF_SPACE_EVENT 160
#define OFF_CONSUMERS_WAITING 192
#define OFF_PRODUCERS_WAITING 196

/* Section 3.2 */
#define KIND_PAD 0
#define KIND_BYTES 1

typedef _Atomic uint64_t a64;
typedef _Atomic uint32_t a32;

static char *base;          /* the attached segment */
static uint64_t capacity;   /* private copy (section 1: never re-read) */
static char *ring;

static a64 *f64(size_t off) { return (a64 *)(base + off); }
static a32 *f32(size_t off) { return (a32 *)(base + off); }

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(EXIT_SYSCALL);
}

/* "Use the shared (not _PRIVATE) futex operations." */
static void futex_wait(a32 *addr, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts = {(time_t)(timeout_ns / 1000000000LL), (long)(timeout_ns % 1000000000LL)};
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void futex_wake(a32 *addr, int n)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* Section 2: identity */

/* State (field 3) and start time (field 22) of /proc/<pid>/stat.  The
 * command name (field 2) is in parentheses and may contain spaces, so fields
 * are counted from the last ')'. */
static int proc_stat(pid_t pid, char *state, unsigned long long *start)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ')
        return -1;
    p += 2; /* field 3 */
    *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return -1;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

static uint64_t my_ns_tag(void)
{
    struct stat st;
    /* "the inode number of /proc/self/ns/pid": stat() follows the link to
     * the namespace's nsfs inode (the number shown in "pid:[...]"). */
    if (stat("/proc/self/ns/pid", &st) < 0)
        die("stat /proc/self/ns/pid");
    uint64_t x = (uint64_t)st.st_ino;
    x ^= x >> 32;
    x ^= x >> 16;
    x ^= x >> 8;
    return (x & 0xff) | 1;
}

/* The full identity, or one with parts left 0 ("unknown"), as a peer that
 * cannot compute them would write it. */
enum { IDENT_FULL, IDENT_BARE, IDENT_TAGONLY, IDENT_STARTONLY };

static uint64_t identity(int mode)
{
    pid_t pid = getpid();
    char state;
    unsigned long long start;
    if (proc_stat(pid, &state, &start) < 0)
        die("read /proc/self/stat");
    uint64_t id = (uint64_t)(uint32_t)pid;
    if (mode == IDENT_FULL || mode == IDENT_STARTONLY)
        id |= (uint64_t)(start & 0xffffff) << 32;
    if (mode == IDENT_FULL || mode == IDENT_TAGONLY)
        id |= my_ns_tag() << 56;
    return id;
}

static uint64_t me;

/* "Threads:" of /proc/<pid>/status, or -1 if it cannot be read. */
static long proc_threads(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long n = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "Threads:", 8) == 0)
            n = strtol(line + 8, NULL, 10);
    fclose(f);
    return n;
}

/* "A holder that died"; parts of the identity left 0 are unknown. */
static int holder_alive(uint64_t owner)
{
    pid_t pid = (pid_t)(uint32_t)(owner & 0xffffffffu);
    uint64_t tag = owner >> 56, start_bits = (owner >> 32) & 0xffffff;
    if (tag != 0 && tag != my_ns_tag())
        return 1;
    if (pid == getpid())
        return owner == me;
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 0;
    char state;
    unsigned long long start;
    if (proc_stat(pid, &state, &start) < 0)
        return 1;
    if (state == 'Z' || state == 'X') {
        long threads = proc_threads(pid);
        if (threads >= 0 && threads <= 1) /* unreadable: cannot tell, so alive */
            return 0;
    }
    if (start_bits != 0 && start_bits != (start & 0xffffff))
        return 0;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Section 2: the process lock at offset `off` (owner +0, seq +8, waiting +12) */

static const char *side_name(size_t off)
{
    return off == OFF_PROD_LOCK ? "producer" : "consumer";
}

/* Returns 0 with the lock held, or -1 if the deadline passed. */
static int lock(size_t off, int64_t deadline)
{
    a64 *owner = f64(off);
    a32 *seq = f32(off + 8), *waiting = f32(off + 12);
    int slept = 0;
    uint64_t watched = 0;
    int64_t watched_since = 0;
    int64_t spin_until = now_ns() + 4000;
    for (;;) {
        uint64_t expected = 0;
        if (atomic_compare_exchange_strong(owner, &expected, me)) {
            if (slept) /* step 5 */
                atomic_store(waiting, 1);
            return 0;
        }
        int64_t t = now_ns();
        if (t >= deadline)
            return -1;
        if (t < spin_until)
            continue; /* "spin briefly" */
        uint64_t cur = expected;
        if (cur != watched) {
            watched = cur;
            watched_since = t;
        } else if (t - watched_since >= 10000000LL) { /* "the same owner for 10 ms" */
            watched_since = t;
            if (!holder_alive(cur)) {
                uint64_t dead = cur;
                if (atomic_compare_exchange_strong(owner, &dead, me)) {
                    atomic_store(waiting, 1); /* "sleepers may have missed a wake-up" */
                    fprintf(stderr, "recovered %s from %llx\n", side_name(off),
                            (unsigned long long)cur);
                    return 0;
                }
            }
        }
        uint32_t s = atomic_load(seq);           /* 1 */
        atomic_store(waiting, 1);                /* 2 */
        if (atomic_load(owner) == 0)             /* 3 */
            continue;
        int64_t wait = 10000000LL;               /* 4: at most 10 ms */
        if (deadline - t < wait)
            wait = deadline - t;
        futex_wait(seq, s, wait);
        slept = 1;
    }
}

static void unlock(size_t off)
{
    a64 *owner = f64(off);
    a32 *seq = f32(off + 8), *waiting = f32(off + 12);
    atomic_exchange(owner, 0);
    atomic_fetch_add(seq, 1);
    if (atomic_load(waiting) == 1 && atomic_exchange(waiting, 0) == 1)
        futex_wake(seq, 1);
}

/* ------------------------------------------------------------------------ */
/* Section 1: attach and validate */

static void attach(int shmid)
{
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) < 0)
        die("shmctl(IPC_STAT)");
    base = shmat(shmid, NULL, 0); /* read-write: the locks live inside */
    if (base == (void *)-1)
        die("shmat");
    size_t segsz = ds.shm_segsz;
    if (segsz < CH_HEADER_SIZE) {
        fprintf(stderr, "segment of %zu bytes is too small\n", segsz);
        exit(EXIT_REFUSED);
    }
    uint64_t magic = 0;
    int64_t give_up = now_ns() + 100000000LL; /* "retry for a short while" */
    while ((magic = atomic_load_explicit(f64(0), memory_order_acquire)) == 0) {
        if (now_ns() > give_up) {
            fprintf(stderr, "magic is still 0\n");
            exit(EXIT_REFUSED);
        }
        usleep(1000);
    }
    uint32_t version, header_size;
    uint64_t cap;
    memcpy(&version, base + 8, 4);
    memcpy(&header_size, base + 12, 4);
    memcpy(&cap, base + 16, 8);
    if (magic != magic_channel() || version != VERSION || header_size != CH_HEADER_SIZE) {
        fprintf(stderr, "not a version-1 channel (magic %llx version %u header %u)\n",
                (unsigned long long)magic, version, header_size);
        exit(EXIT_REFUSED);
    }
    if (cap < 16 || cap % 8 != 0 || cap > segsz - CH_HEADER_SIZE) {
        fprintf(stderr, "capacity %llu refused (segment %zu)\n", (unsigned long long)cap, segsz);
        exit(EXIT_REFUSED);
    }
    capacity = cap;
    ring = base + CH_HEADER_SIZE;
}

static uint64_t record_size(uint64_t len)
{
    return 8 + ((len + 7) & ~(uint64_t)7);
}

static void ring_copy_out(uint64_t pos, void *dst, uint64_t n)
{
    uint64_t p = pos % capacity, first = capacity - p;
    if (first > n)
        first = n;
    memcpy(dst, ring + p, first);
    memcpy((char *)dst + first, ring, n - first);
}

static void ring_copy_in(uint64_t pos, const void *src, uint64_t n)
{
    uint64_t p = pos % capacity, first = capacity - p;
    if (first > n)
        first = n;
    memcpy(ring + p, src, first);
    memcpy(ring, (const char *)src + first, n - first);
}

/* 3.3 step 8 and 3.4 step 8 */
static void wake(size_t waiting_off, size_t event_off)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(f32(waiting_off)) == 1 && atomic_exchange(f32(waiting_off), 0) == 1) {
        atomic_fetch_add(f32(event_off), 1);
        futex_wake(f32(event_off), INT_MAX);
    }
}

/* 3.5, for a consumer (need == 0) or a producer (need bytes of room).
 * Returns 0 when the condition may hold, -1 past the deadline. */
static int ready(uint64_t need)
{
    uint64_t t = atomic_load_explicit(f64(OFF_TAIL), memory_order_acquire);
    uint64_t h = atomic_load_explicit(f64(OFF_HEAD), memory_order_acquire);
    if (need == 0)
        return t != h;
    return t - h > capacity || capacity - (t - h) >= need; /* corrupt: go and look */
}

static int wait_for(uint64_t need, int64_t deadline)
{
    size_t event = need ? OFF_SPACE_EVENT : OFF_DATA_EVENT;
    size_t waiting = need ? OFF_PRODUCERS_WAITING : OFF_CONSUMERS_WAITING;
    for (;;) {
        if (ready(need))
            return 0;
        int64_t t = now_ns();
        if (t >= deadline)
            return -1;
        uint32_t e = atomic_load(f32(event));                  /* 2 */
        atomic_store(f32(waiting), 1);                         /* 3 */
        atomic_thread_fence(memory_order_seq_cst);
        if (ready(need))                                       /* 4 */
            return 0;
        int64_t slice = 100000000LL;                           /* 5: at most 100 ms */
        if (deadline - t < slice)
            slice = deadline - t;
        futex_wait(f32(event), e, slice);
    }
}

/* ------------------------------------------------------------------------ */
/* 3.4: get one message.  Returns the payload length (payload in *out, kind in
 * *kind), -1 when empty. */

static int64_t get_one(unsigned char **out, unsigned *kind, int64_t deadline)
{
    for (;;) {
        if (lock(OFF_CONS_LOCK, deadline) < 0)                          /* 1 */
            return -1;
        uint64_t h = atomic_load_explicit(f64(OFF_HEAD), memory_order_relaxed);   /* 2 */
        uint64_t t = atomic_load_explicit(f64(OFF_TAIL), memory_order_acquire);
        if (t - h > capacity || h % 8 != 0) {
            unlock(OFF_CONS_LOCK);
            fprintf(stderr, "corrupt: head %llu tail %llu\n", (unsigned long long)h,
                    (unsigned long long)t);
            exit(EXIT_CORRUPT);
        }
        if (t == h) {
            unlock(OFF_CONS_LOCK);
            if (wait_for(0, deadline) < 0)
                return -1;
            continue;
        }
        uint32_t rh[2];                                                 /* 3 */
        ring_copy_out(h, rh, 8);
        uint64_t len = rh[0];
        if (record_size(len) > t - h) {
            unlock(OFF_CONS_LOCK);
            fprintf(stderr, "corrupt: record of %llu bytes, %llu queued\n",
                    (unsigned long long)len, (unsigned long long)(t - h));
            exit(EXIT_CORRUPT);
        }
        *kind = rh[1] & 0xff;
        if (*kind == KIND_PAD) {                        /* 3.2: padding, skip it */
            atomic_store_explicit(f64(OFF_HEAD), h + record_size(len), memory_order_release);
            unlock(OFF_CONS_LOCK);
            wake(OFF_PRODUCERS_WAITING, OFF_SPACE_EVENT);
            continue;
        }
        *out = malloc(len ? len : 1);
        if (*out == NULL)
            die("malloc");
        ring_copy_out(h + 8, *out, len);                                /* 4 */
        atomic_store_explicit(f64(OFF_HEAD), h + record_size(len), memory_order_release); /* 5 */
        atomic_store_explicit(f64(OFF_GET_COUNT),                       /* 6 */
                              atomic_load_explicit(f64(OFF_GET_COUNT), memory_order_relaxed) + 1,
                              memory_order_relaxed);
        unlock(OFF_CONS_LOCK);                                          /* 7 */
        wake(OFF_PRODUCERS_WAITING, OFF_SPACE_EVENT);                   /* 8 */
        return (int64_t)len;
    }
}

/* 3.3: put records (one commit for all).  Returns 0, or -1 past the deadline. */
static int put_records(unsigned char **msgs, uint64_t *lens, size_t n, int64_t deadline)
{
    uint64_t need = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > capacity - 8 || lens[i] > UINT32_MAX) {
            fprintf(stderr, "message of %llu bytes can never fit\n", (unsigned long long)lens[i]);
            exit(EXIT_USAGE);
        }
        need += record_size(lens[i]);
    }
    if (need > capacity) {
        fprintf(stderr, "batch of %llu bytes can never fit\n", (unsigned long long)need);
        exit(EXIT_USAGE);
    }
    for (;;) {
        if (lock(OFF_PROD_LOCK, deadline) < 0)                          /* 1 */
            return -1;
        uint64_t t = atomic_load_explicit(f64(OFF_TAIL), memory_order_relaxed);   /* 2 */
        uint64_t h = atomic_load_explicit(f64(OFF_HEAD), memory_order_acquire);
        if (t - h > capacity || t % 8 != 0) {
            unlock(OFF_PROD_LOCK);
            fprintf(stderr, "corrupt: head %llu tail %llu\n", (unsigned long long)h,
                    (unsigned long long)t);
            exit(EXIT_CORRUPT);
        }
        if (capacity - (t - h) < need) {                                /* 3 */
            unlock(OFF_PROD_LOCK);
            if (wait_for(need, deadline) < 0)
                return -1;
            continue;
        }
        uint64_t pos = t;                                               /* 4 */
        for (size_t i = 0; i < n; i++) {
            uint32_t rh[2] = {(uint32_t)lens[i], KIND_BYTES};
            ring_copy_in(pos, rh, 8);
            ring_copy_in(pos + 8, msgs[i], lens[i]);
            pos += record_size(lens[i]);
        }
        atomic_store_explicit(f64(OFF_TAIL), pos, memory_order_release);           /* 5 */
        atomic_store_explicit(f64(OFF_PUT_COUNT),                                  /* 6 */
                              atomic_load_explicit(f64(OFF_PUT_COUNT), memory_order_relaxed) + n,
                              memory_order_relaxed);
        unlock(OFF_PROD_LOCK);                                                     /* 7 */
        wake(OFF_CONSUMERS_WAITING, OFF_DATA_EVENT);                               /* 8 */
        return 0;
    }
}

/* ------------------------------------------------------------------------ */
/* Commands */

static int64_t deadline_from(const char *arg)
{
    double s = arg ? strtod(arg, NULL) : 10.0;
    return now_ns() + (int64_t)(s * 1e9);
}

static int cmd_read(int shmid, long n, const char *timeout)
{
    attach(shmid);
    int64_t deadline = deadline_from(timeout);
    for (long i = 0; i < n; i++) {
        unsigned char *p;
        unsigned kind;
        int64_t len = get_one(&p, &kind, deadline);
        if (len < 0) {
            fprintf(stderr, "timed out after %ld messages\n", i);
            return EXIT_TIMEOUT;
        }
        printf("%u %lld ", kind, (long long)len);
        for (int64_t j = 0; j < len; j++)
            printf("%02x", p[j]);
        printf("\n");
        fflush(stdout);
        free(p);
    }
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One line of hex from stdin; returns its length in bytes, -1 at EOF. */
static int64_t read_hex_line(unsigned char **out)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return -1;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    if (n % 2) {
        fprintf(stderr, "odd-length hex line\n");
        exit(EXIT_USAGE);
    }
    *out = malloc((size_t)n / 2 + 1);
    if (*out == NULL)
        die("malloc");
    for (ssize_t i = 0; i < n / 2; i++) {
        int hi = hexval(line[2 * i]), lo = hexval(line[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "bad hex\n");
            exit(EXIT_USAGE);
        }
        (*out)[i] = (unsigned char)(hi << 4 | lo);
    }
    free(line);
    return n / 2;
}

static int cmd_write(int shmid, int batch, const char *timeout)
{
    attach(shmid);
    int64_t deadline = deadline_from(timeout);
    unsigned char *msgs[4096];
    uint64_t lens[4096];
    size_t n = 0;
    int64_t len;
    unsigned char *p;
    while ((len = read_hex_line(&p)) >= 0) {
        if (!batch) {
            uint64_t one = (uint64_t)len;
            if (put_records(&p, &one, 1, deadline) < 0) {
                fprintf(stderr, "timed out\n");
                return EXIT_TIMEOUT;
            }
            free(p);
            continue;
        }
        if (n == 4096) {
            fprintf(stderr, "batch too long\n");
            return EXIT_USAGE;
        }
        msgs[n] = p;
        lens[n++] = (uint64_t)len;
    }
    if (batch && n) {
        if (put_records(msgs, lens, n, deadline) < 0) {
            fprintf(stderr, "timed out\n");
            return EXIT_TIMEOUT;
        }
        for (size_t i = 0; i < n; i++)
            free(msgs[i]);
    }
    return 0;
}

static int cmd_hold(int shmid, const char *side)
{
    attach(shmid);
    size_t off = strcmp(side, "producer") == 0 ? OFF_PROD_LOCK : OFF_CONS_LOCK;
    if (lock(off, now_ns() + 10000000000LL) < 0)
        return EXIT_TIMEOUT;
    printf("held\n");
    fflush(stdout);
    sleep(60); /* until killed */
    unlock(off);
    return 0;
}

static int cmd_create(unsigned long long cap)
{
    if (cap < 16 || cap % 8) {
        fprintf(stderr, "capacity must be a multiple of 8, at least 16\n");
        return EXIT_USAGE;
    }
    /* "Size the segment as: Channel 256 + capacity" */
    int shmid = shmget(IPC_PRIVATE, CH_HEADER_SIZE + cap, IPC_CREAT | 0600);
    if (shmid < 0)
        die("shmget");
    base = shmat(shmid, NULL, 0);
    if (base == (void *)-1)
        die("shmat");
    /* "write every header field except magic, then store magic (release)" */
    uint32_t version = VERSION, header_size = CH_HEADER_SIZE, pid = (uint32_t)getpid();
    uint64_t stride = 0, c = cap;
    memcpy(base + 8, &version, 4);
    memcpy(base + 12, &header_size, 4);
    memcpy(base + 16, &c, 8);
    memcpy(base + 24, &stride, 8);
    memcpy(base + 32, &pid, 4);
    atomic_store_explicit(f64(0), magic_channel(), memory_order_release);
    printf("%d\n", shmid);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        goto usage;
    const char *cmd = argv[1];
    int mode = IDENT_FULL;
    if (strcmp(cmd, "hold") == 0 && argc == 5) {
        if (strcmp(argv[4], "bare") == 0)
            mode = IDENT_BARE;
        else if (strcmp(argv[4], "tagonly") == 0)
            mode = IDENT_TAGONLY;
        else if (strcmp(argv[4], "startonly") == 0)
            mode = IDENT_STARTONLY;
        else if (strcmp(argv[4], "full") != 0)
            goto usage;
    }
    me = identity(mode);
    if (strcmp(cmd, "read") == 0 && (argc == 4 || argc == 5))
        return cmd_read(atoi(argv[2]), atol(argv[3]), argc == 5 ? argv[4] : NULL);
    if (strcmp(cmd, "write") == 0 && (argc == 3 || argc == 4))
        return cmd_write(atoi(argv[2]), 0, argc == 4 ? argv[3] : NULL);
    if (strcmp(cmd, "write-batch") == 0 && argc == 3)
        return cmd_write(atoi(argv[2]), 1, NULL);
    if (strcmp(cmd, "hold") == 0 && argc == 5)
        return cmd_hold(atoi(argv[2]), argv[3]);
    if (strcmp(cmd, "create") == 0 && argc == 3)
        return cmd_create(strtoull(argv[2], NULL, 10));
    if (strcmp(cmd, "check") == 0 && argc == 3) {
        attach(atoi(argv[2]));
        printf("capacity %llu\n", (unsigned long long)capacity);
        return 0;
    }
    if (strcmp(cmd, "ident") == 0 && argc == 2) {
        printf("%llx\n", (unsigned long long)me);
        return 0;
    }
usage:
    fprintf(stderr, "usage: see the comment at the top of channel_reader.c\n");
    return EXIT_USAGE;
}
