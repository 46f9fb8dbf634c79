/*
 * channel_reader: a foreign peer of shmsem's Channel and Mailbox, written
 * from docs/protocol.md alone (version 2, sections 1 to 4), for
 * tests/test_protocol_c.py.  It does not include or copy anything from
 * shmsem's C sources; every step below names the section of the document it
 * follows.
 *
 * Usage: channel_reader [--no-libc-list] COMMAND ARGS...
 *   read SHMID N [TIMEOUT_S]   take N messages (3.4), waiting for data (3.5);
 *                              print "<kind> <length> <hex payload>" for each
 *   write SHMID [TIMEOUT_S]    put one kind-1 record per stdin line (hex), one
 *                              at a time (3.3), waiting for room (3.5)
 *   write-batch SHMID          put all stdin lines as one batch (one commit)
 *   hold SHMID producer|consumer|writer [pause|exit|exec]
 *                              take that lock (section 2; "writer" is the
 *                              Mailbox's), print "held", then pause until
 *                              killed (default), exit without unlocking, or
 *                              exec this program as "paused"
 *   paused                     print "paused" and pause until killed
 *   create CAPACITY            create a private Channel segment (section 1);
 *                              print its shmid
 *   check SHMID                validate a Channel header only (section 1)
 *   mb-publish SHMID HEX       publish one value to a Mailbox (4.2); print
 *                              its sequence number
 *   mb-read SHMID              read a Mailbox (4.3): print "<seq> <hex>"
 *
 * --no-libc-list unregisters the C library's robust list first, so that the
 * peer registers a head of its own (section 2, "only when that returns NULL").
 *
 * A lock taken over from a dead holder is reported on stderr as
 * "recovered <lock> lock (word 0x...)".
 *
 * Exit codes: 0 ok; 1 a syscall failed; 2 usage; 3 the header is refused
 * (section 1); 4 the segment is corrupt (3.3, 3.4, 4.3); 5 timed out;
 * 6 the robust list's geometry does not fit the lock (section 2).
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXIT_SYSCALL 1
#define EXIT_USAGE 2
#define EXIT_REFUSED 3
#define EXIT_CORRUPT 4
#define EXIT_TIMEOUT 5
#define EXIT_GEOMETRY 6

/* Section 1 */
#define VERSION 2
#define CH_HEADER_SIZE 256
#define MB_HEADER_SIZE 128

/* Section 2: the lock */
#define LOCK_WORD 0
#define LOCK_RECOVERIES 8
#define LOCK_LINKS 24
#define LOCK_LINKS_END 40
_Static_assert(FUTEX_TID_MASK == 0x3fffffff, "section 2");
_Static_assert(FUTEX_OWNER_DIED == 0x40000000, "section 2");
_Static_assert(FUTEX_WAITERS == 0x80000000u, "section 2");

/* Section 3.1 */
#define OFF_PROD_LOCK 64
#define OFF_TAIL 112
#define OFF_PUT_COUNT 120
#define OFF_CONS_LOCK 128
#define OFF_HEAD 176
#define OFF_GET_COUNT 184
#define OFF_DATA_EVENT 192
#define OFF_SPACE_EVENT 196
#define OFF_CONSUMERS_WAITING 200
#define OFF_PRODUCERS_WAITING 204

/* Section 3.2 */
#define KIND_PAD 0
#define KIND_BYTES 1

/* Section 4.1 */
#define OFF_WRITER_LOCK 64
#define OFF_STATE 112
#define OFF_EVENT 120
#define OFF_WAITING 124
#define CELL_LOCK_SEQ 0
#define CELL_SEQ 8
#define CELL_LENGTH 16
#define CELL_VALUE 64

typedef _Atomic uint64_t a64;
typedef _Atomic uint32_t a32;

static char *base;          /* the attached segment */
static uint64_t capacity;   /* private copies (section 1: never re-read) */
static uint64_t cell_stride;
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

/* "Use the shared (not _PRIVATE) futex operations."  Returns 0 when woken
 * (or spuriously), else the errno (EAGAIN, ETIMEDOUT, EINTR). */
static int futex_wait(a32 *addr, uint32_t expected, int64_t timeout_ns)
{
    if (timeout_ns < 0)
        timeout_ns = 0;
    struct timespec ts = {(time_t)(timeout_ns / 1000000000LL), (long)(timeout_ns % 1000000000LL)};
    if (syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, expected, &ts, NULL, 0) == 0)
        return 0;
    return errno;
}

static void futex_wake(a32 *addr, int n)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* Section 2: the robust list.  Its head lives in this thread's private
 * memory (the C library's, or ours); the nodes live in the segment. */

static struct robust_list_head *rhead;
static struct robust_list_head own_head; /* used only when none is registered */

/* Our nodes on the list, in list order: they are its tail.  Private, so
 * that no pointer is ever read back from a lock's `links`. */
#define MAX_HELD 4
static struct robust_list *held[MAX_HELD];
static int nheld;

/* Stores the kernel may read when this thread dies: plain stores, but kept
 * in program order (the kernel reads them from this same thread's exit). */
static void set_next(struct robust_list *entry, struct robust_list *next)
{
    atomic_signal_fence(memory_order_seq_cst);
    *(struct robust_list *volatile *)&entry->next = next;
    atomic_signal_fence(memory_order_seq_cst);
}

static void set_pending(struct robust_list *node)
{
    atomic_signal_fence(memory_order_seq_cst);
    *(struct robust_list *volatile *)&rhead->list_op_pending = node;
    atomic_signal_fence(memory_order_seq_cst);
}

/* The entry after `entry`, for the head and the C library's own entries
 * only (bit 0 marks a PI futex in the kernel's ABI). */
static struct robust_list *next_of(struct robust_list *entry)
{
    uintptr_t p = (uintptr_t) * (struct robust_list *volatile *)&entry->next;
    return (struct robust_list *)(p & ~(uintptr_t)1);
}

/* "register a head of your own only when that returns NULL"; then check
 * that the list's futex_offset puts a lock's node inside `links`. */
static void robust_init(void)
{
    struct robust_list_head *h = NULL;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, 0, &h, &len) < 0)
        die("get_robust_list");
    if (h == NULL) {
        own_head.list.next = &own_head.list; /* an empty list points at itself */
        own_head.futex_offset = -32;         /* "A peer that registers its own list uses -32 too" */
        own_head.list_op_pending = NULL;
        if (syscall(SYS_set_robust_list, &own_head, sizeof own_head) < 0)
            die("set_robust_list");
        h = &own_head;
    } else if (len != sizeof(struct robust_list_head)) {
        fprintf(stderr, "robust list head of %zu bytes\n", len);
        exit(EXIT_GEOMETRY);
    }
    rhead = h;
    /* The node is at word - futex_offset; it, and the "previous" pointer a
     * C library may keep in the 8 bytes before it, must fall inside links. */
    long node = -h->futex_offset;
    if (node - (long)sizeof(void *) < LOCK_LINKS ||
        node + (long)sizeof(struct robust_list) > LOCK_LINKS_END) {
        fprintf(stderr, "futex_offset %ld puts the node outside the lock's links\n",
                h->futex_offset);
        exit(EXIT_GEOMETRY);
    }
}

/* The last of the C library's entries (or the head): the predecessor of our
 * first node.  Walks only entries that are not ours. */
static struct robust_list *last_foreign(void)
{
    struct robust_list *end = nheld ? held[0] : &rhead->list, *p = &rhead->list;
    for (int i = 0; i < 4096; i++) {
        struct robust_list *n = next_of(p);
        if (n == end)
            return p;
        p = n;
    }
    fprintf(stderr, "the robust list does not lead to our node\n");
    exit(EXIT_SYSCALL);
}

/* Lock step 3: "node->next = the list head, then the predecessor's next = node" */
static void link_node(struct robust_list *node)
{
    if (nheld == MAX_HELD) {
        fprintf(stderr, "too many locks held\n");
        exit(EXIT_USAGE);
    }
    struct robust_list *pred = nheld ? held[nheld - 1] : last_foreign();
    set_next(node, &rhead->list);
    set_next(pred, node);
    held[nheld++] = node;
}

/* Unlock step 2 */
static void unlink_node(struct robust_list *node)
{
    int i = 0;
    while (i < nheld && held[i] != node)
        i++;
    if (i == nheld) {
        fprintf(stderr, "unlocking a lock we do not hold\n");
        exit(EXIT_USAGE);
    }
    struct robust_list *pred = i ? held[i - 1] : last_foreign();
    struct robust_list *succ = i + 1 < nheld ? held[i + 1] : &rhead->list;
    set_next(pred, succ);
    memmove(&held[i], &held[i + 1], (size_t)(nheld - i - 1) * sizeof held[0]);
    nheld--;
}

/* ------------------------------------------------------------------------ */
/* Section 2: the process lock */

struct plock {
    const char *name;
    a32 *word;
    a64 *recoveries;
    struct robust_list *node; /* word - futex_offset */
};

static struct plock plock_at(size_t off, const char *name)
{
    struct plock l = {name, f32(off + LOCK_WORD), f64(off + LOCK_RECOVERIES),
                      (struct robust_list *)(base + off + LOCK_WORD - rhead->futex_offset)};
    return l;
}

static pid_t my_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* Returns 0 with the lock held, or -1 if the deadline passed. */
static int lock(const struct plock *l, int64_t deadline)
{
    /* "shmsem waits for a lock at least 50 ms, whatever the caller's timeout" */
    int64_t start = now_ns();
    if (deadline < start + 50000000LL)
        deadline = start + 50000000LL;
    uint32_t tid = (uint32_t)my_tid() & FUTEX_TID_MASK;
    int slept = 0, woken = 0;
    int64_t spin_until = 0;
    for (;;) {
        uint32_t v = atomic_load_explicit(l->word, memory_order_relaxed);
        if ((v & FUTEX_TID_MASK) == 0) {
            set_pending(l->node);                                               /* 1 */
            uint32_t mine = tid | (v & FUTEX_WAITERS) | (slept ? FUTEX_WAITERS : 0);
            if (atomic_compare_exchange_strong_explicit(l->word, &v, mine,      /* 2 */
                                                        memory_order_acquire,
                                                        memory_order_relaxed)) {
                link_node(l->node);                                             /* 3 */
                set_pending(NULL);
                if (v & FUTEX_OWNER_DIED) {
                    atomic_fetch_add_explicit(l->recoveries, 1, memory_order_relaxed);
                    fprintf(stderr, "recovered %s lock (word 0x%08x)\n", l->name, v);
                }
                return 0;
            }
            set_pending(NULL);                                                  /* 4 */
            if ((v & FUTEX_TID_MASK) == 0)
                continue;
        }
        int64_t t = now_ns();
        if (t >= deadline) {
            /* Step 4: a wake-up meant for one sleeper that we do not use is
             * passed on, whatever the word holds (the unlock that sent it
             * cleared FUTEX_WAITERS). */
            if (woken)
                futex_wake(l->word, 1);
            return -1;
        }
        if (spin_until == 0)
            spin_until = t + 4000;
        if (t < spin_until)
            continue;                                                /* "spin briefly" */
        if (!(v & FUTEX_WAITERS) &&
            !atomic_compare_exchange_strong(l->word, &v, v | FUTEX_WAITERS))
            continue;
        int64_t slice = 100000000LL; /* at most 100 ms: a woken waiter killed before
                                      * it took the lock takes the wake-up along */
        if (deadline - t < slice)
            slice = deadline - t;
        int r = futex_wait(l->word, v | FUTEX_WAITERS, slice);
        slept = 1;
        woken = r == 0;
    }
}

static void unlock(const struct plock *l)
{
    set_pending(l->node);                                                       /* 1 */
    unlink_node(l->node);                                                       /* 2 */
    uint32_t old = atomic_exchange_explicit(l->word, 0, memory_order_release);  /* 3 */
    if (old & FUTEX_WAITERS)                                                    /* 4 */
        futex_wake(l->word, 1);
    set_pending(NULL);                                                          /* 5 */
}

/* ------------------------------------------------------------------------ */
/* Section 1: attach and validate */

enum kind { CHANNEL, MAILBOX };

static uint64_t magic_of(enum kind k)
{
    uint64_t m;
    memcpy(&m, k == CHANNEL ? "SHMSEMCH" : "SHMSEMMB", 8);
    return m;
}

static void refuse(const char *why)
{
    fprintf(stderr, "refused: %s\n", why);
    exit(EXIT_REFUSED);
}

static void attach(int shmid, enum kind k)
{
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) < 0)
        die("shmctl(IPC_STAT)");
    base = shmat(shmid, NULL, 0); /* read-write: the locks live inside */
    if (base == (void *)-1)
        die("shmat");
    uint64_t segsz = ds.shm_segsz;
    if (segsz < 64)
        refuse("segment smaller than the common header");
    uint64_t magic = 0;
    int64_t give_up = now_ns() + 100000000LL; /* "retry for a short while" */
    while ((magic = atomic_load_explicit(f64(0), memory_order_acquire)) == 0) {
        if (now_ns() > give_up)
            refuse("magic is still 0");
        usleep(1000);
    }
    uint32_t version, header_size;
    uint64_t cap, stride;
    memcpy(&version, base + 8, 4);
    memcpy(&header_size, base + 12, 4);
    memcpy(&cap, base + 16, 8);
    memcpy(&stride, base + 24, 8);
    if (magic != magic_of(k) || version != VERSION)
        refuse(k == CHANNEL ? "not a version-2 Channel" : "not a version-2 Mailbox");
    if (k == CHANNEL) {
        if (header_size != CH_HEADER_SIZE)
            refuse("header_size");
        if (cap < 16 || cap % 8 != 0 || segsz < CH_HEADER_SIZE || cap > segsz - CH_HEADER_SIZE)
            refuse("capacity");
        ring = base + CH_HEADER_SIZE;
    } else {
        if (header_size != MB_HEADER_SIZE)
            refuse("header_size");
        /* written so that no sum can wrap */
        if (stride % 64 != 0 || stride < 64 || cap > stride - 64 || segsz < MB_HEADER_SIZE ||
            stride > (segsz - MB_HEADER_SIZE) / 2)
            refuse("capacity or cell_stride");
        cell_stride = stride;
    }
    capacity = cap;
}

/* ------------------------------------------------------------------------ */
/* Section 3: Channel */

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

/* 3.3 step 8, 3.4 step 8 and 4.2 step 8 */
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

/* 3.4: get one message.  Returns the payload length (payload in *out, kind in
 * *kind), -1 when empty. */
static int64_t get_one(unsigned char **out, unsigned *kind, int64_t deadline)
{
    struct plock cl = plock_at(OFF_CONS_LOCK, "consumer");
    for (;;) {
        if (lock(&cl, deadline) < 0)                                    /* 1 */
            return -1;
        uint64_t h = atomic_load_explicit(f64(OFF_HEAD), memory_order_relaxed);   /* 2 */
        uint64_t t = atomic_load_explicit(f64(OFF_TAIL), memory_order_acquire);
        if (t - h > capacity || h % 8 != 0) {
            unlock(&cl);
            fprintf(stderr, "corrupt: head %llu tail %llu\n", (unsigned long long)h,
                    (unsigned long long)t);
            exit(EXIT_CORRUPT);
        }
        if (t == h) {
            unlock(&cl);
            if (wait_for(0, deadline) < 0)
                return -1;
            continue;
        }
        uint32_t rh[2];                                                 /* 3 */
        ring_copy_out(h, rh, 8);
        uint64_t len = rh[0];
        if (record_size(len) > t - h) {
            unlock(&cl);
            fprintf(stderr, "corrupt: record of %llu bytes, %llu queued\n",
                    (unsigned long long)len, (unsigned long long)(t - h));
            exit(EXIT_CORRUPT);
        }
        *kind = rh[1] & 0xff;
        if (*kind == KIND_PAD) {                        /* 3.2: padding, skip it */
            atomic_store_explicit(f64(OFF_HEAD), h + record_size(len), memory_order_release);
            unlock(&cl);
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
        unlock(&cl);                                                    /* 7 */
        wake(OFF_PRODUCERS_WAITING, OFF_SPACE_EVENT);                   /* 8 */
        return (int64_t)len;
    }
}

/* 3.3: put records (one commit for all).  Returns 0, or -1 past the deadline. */
static int put_records(unsigned char **msgs, uint64_t *lens, size_t n, int64_t deadline)
{
    struct plock pl = plock_at(OFF_PROD_LOCK, "producer");
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
        if (lock(&pl, deadline) < 0)                                    /* 1 */
            return -1;
        uint64_t t = atomic_load_explicit(f64(OFF_TAIL), memory_order_relaxed);   /* 2 */
        uint64_t h = atomic_load_explicit(f64(OFF_HEAD), memory_order_acquire);
        if (t - h > capacity || t % 8 != 0) {
            unlock(&pl);
            fprintf(stderr, "corrupt: head %llu tail %llu\n", (unsigned long long)h,
                    (unsigned long long)t);
            exit(EXIT_CORRUPT);
        }
        if (capacity - (t - h) < need) {                                /* 3 */
            unlock(&pl);
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
        unlock(&pl);                                                               /* 7 */
        wake(OFF_CONSUMERS_WAITING, OFF_DATA_EVENT);                               /* 8 */
        return 0;
    }
}

/* ------------------------------------------------------------------------ */
/* Section 4: Mailbox */

static char *cell(uint64_t c)
{
    return base + MB_HEADER_SIZE + c * cell_stride;
}

static a64 *cell64(uint64_t c, size_t off)
{
    return (a64 *)(cell(c) + off);
}

/* 4.2 */
static uint64_t mb_publish(const unsigned char *value, uint64_t n, int64_t deadline)
{
    if (n > capacity) {
        fprintf(stderr, "value of %llu bytes is larger than the capacity\n", (unsigned long long)n);
        exit(EXIT_USAGE);
    }
    struct plock wl = plock_at(OFF_WRITER_LOCK, "writer");
    if (lock(&wl, deadline) < 0)                                                  /* 1 */
        return 0;
    uint64_t st = atomic_load(f64(OFF_STATE));                                    /* 2 */
    uint64_t seq = (st >> 1) + 1, c = (st & 1) ^ 1;
    uint64_t s = atomic_load(cell64(c, CELL_LOCK_SEQ));                           /* 3 */
    uint64_t odd = s + 1 + (s & 1);
    atomic_store_explicit(cell64(c, CELL_LOCK_SEQ), odd, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(cell64(c, CELL_SEQ), seq, memory_order_relaxed);       /* 4 */
    atomic_store_explicit(cell64(c, CELL_LENGTH), n, memory_order_relaxed);
    memcpy(cell(c) + CELL_VALUE, value, n);
    atomic_store_explicit(cell64(c, CELL_LOCK_SEQ), odd + 1, memory_order_release); /* 5 */
    atomic_store_explicit(f64(OFF_STATE), seq << 1 | c, memory_order_release);   /* 6 */
    unlock(&wl);                                                                  /* 7 */
    wake(OFF_WAITING, OFF_EVENT);                                                 /* 8 */
    return seq;
}

/* 4.3: returns the value's length (bytes in *out, sequence number in *seq). */
static uint64_t mb_read(unsigned char **out, uint64_t *seq)
{
    unsigned char *buf = malloc(capacity ? capacity : 1);
    if (buf == NULL)
        die("malloc");
    uint64_t watched = 0;
    int64_t watched_since = now_ns();
    for (;;) {
        uint64_t st = atomic_load_explicit(f64(OFF_STATE), memory_order_acquire); /* 1 */
        int64_t t = now_ns();
        if (st != watched) {
            watched = st;
            watched_since = t;
        } else if (t - watched_since > 1000000000LL) {
            fprintf(stderr, "corrupt: a cell's counter never settles\n");
            exit(EXIT_CORRUPT);
        }
        if (st == 0) {
            *out = buf;
            *seq = 0;
            return 0;
        }
        uint64_t c = st & 1;
        uint64_t s1 = atomic_load_explicit(cell64(c, CELL_LOCK_SEQ), memory_order_acquire); /* 2 */
        if (s1 & 1)
            continue;
        uint64_t len = atomic_load_explicit(cell64(c, CELL_LENGTH), memory_order_relaxed);  /* 3 */
        uint64_t sq = atomic_load_explicit(cell64(c, CELL_SEQ), memory_order_relaxed);
        if (len > capacity) {
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(cell64(c, CELL_LOCK_SEQ), memory_order_relaxed) == s1) {
                fprintf(stderr, "corrupt: value of %llu bytes\n", (unsigned long long)len);
                exit(EXIT_CORRUPT);
            }
            continue;
        }
        memcpy(buf, cell(c) + CELL_VALUE, len);                                   /* 4 */
        atomic_thread_fence(memory_order_acquire);                                /* 5 */
        if (atomic_load_explicit(cell64(c, CELL_LOCK_SEQ), memory_order_relaxed) != s1)
            continue;
        *out = buf;
        *seq = sq;
        return len;
    }
}

/* ------------------------------------------------------------------------ */
/* Commands */

static int64_t deadline_from(const char *arg)
{
    double s = arg ? strtod(arg, NULL) : 10.0;
    return now_ns() + (int64_t)(s * 1e9);
}

static void print_hex(const unsigned char *p, uint64_t n)
{
    for (uint64_t j = 0; j < n; j++)
        printf("%02x", p[j]);
}

static int cmd_read(int shmid, long n, const char *timeout)
{
    attach(shmid, CHANNEL);
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
        print_hex(p, (uint64_t)len);
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

/* Hex text to bytes; returns the byte count. */
static uint64_t unhex(const char *text, size_t n, unsigned char **out)
{
    if (n % 2) {
        fprintf(stderr, "odd-length hex\n");
        exit(EXIT_USAGE);
    }
    *out = malloc(n / 2 + 1);
    if (*out == NULL)
        die("malloc");
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(text[2 * i]), lo = hexval(text[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "bad hex\n");
            exit(EXIT_USAGE);
        }
        (*out)[i] = (unsigned char)(hi << 4 | lo);
    }
    return n / 2;
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
    uint64_t len = unhex(line, (size_t)n, out);
    free(line);
    return (int64_t)len;
}

static int cmd_write(int shmid, int batch, const char *timeout)
{
    attach(shmid, CHANNEL);
    int64_t deadline = deadline_from(timeout);
    static unsigned char *msgs[4096];
    static uint64_t lens[4096];
    size_t n = 0;
    int64_t len;
    unsigned char *p;
    while ((len = read_hex_line(&p)) >= 0) {
        if (!batch) {
            uint64_t one = (uint64_t)len;
            int r = put_records(&p, &one, 1, deadline);
            free(p);
            if (r < 0) {
                fprintf(stderr, "timed out\n");
                return EXIT_TIMEOUT;
            }
            continue;
        }
        if (n == 4096) {
            fprintf(stderr, "batch too long\n");
            return EXIT_USAGE;
        }
        msgs[n] = p;
        lens[n++] = (uint64_t)len;
    }
    int r = batch && n ? put_records(msgs, lens, n, deadline) : 0;
    for (size_t i = 0; i < n; i++)
        free(msgs[i]);
    if (r < 0) {
        fprintf(stderr, "timed out\n");
        return EXIT_TIMEOUT;
    }
    return 0;
}

static _Noreturn int cmd_paused(void)
{
    printf("paused\n");
    fflush(stdout);
    for (;;)
        pause(); /* until killed */
}

static int cmd_hold(int shmid, const char *which, const char *then)
{
    size_t off;
    if (strcmp(which, "writer") == 0) {
        attach(shmid, MAILBOX);
        off = OFF_WRITER_LOCK;
    } else {
        attach(shmid, CHANNEL);
        off = strcmp(which, "producer") == 0 ? OFF_PROD_LOCK : OFF_CONS_LOCK;
    }
    struct plock l = plock_at(off, which);
    if (lock(&l, now_ns() + 10000000000LL) < 0) {
        fprintf(stderr, "timed out\n");
        return EXIT_TIMEOUT;
    }
    printf("held\n");
    fflush(stdout);
    if (strcmp(then, "exit") == 0)
        _exit(0); /* the kernel walks the robust list at exit */
    if (strcmp(then, "exec") == 0) {
        /* ... and at exec: the pid lives on, the lock's holder does not */
        execl("/proc/self/exe", "channel_reader", "paused", (char *)NULL);
        die("execl");
    }
    return cmd_paused();
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
    atomic_store_explicit(f64(0), magic_of(CHANNEL), memory_order_release);
    printf("%d\n", shmid);
    return 0;
}

static int cmd_mb_publish(int shmid, const char *hex)
{
    attach(shmid, MAILBOX);
    unsigned char *value;
    uint64_t n = unhex(hex, strlen(hex), &value);
    uint64_t seq = mb_publish(value, n, now_ns() + 10000000000LL);
    free(value);
    if (seq == 0) {
        fprintf(stderr, "timed out\n");
        return EXIT_TIMEOUT;
    }
    printf("%llu\n", (unsigned long long)seq);
    return 0;
}

static int cmd_mb_read(int shmid)
{
    attach(shmid, MAILBOX);
    unsigned char *value;
    uint64_t seq, n = mb_read(&value, &seq);
    printf("%llu ", (unsigned long long)seq);
    print_hex(value, n);
    printf("\n");
    free(value);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--no-libc-list") == 0) {
        /* As if the C library had registered nothing */
        if (syscall(SYS_set_robust_list, NULL, sizeof(struct robust_list_head)) < 0)
            die("set_robust_list");
        argv++;
        argc--;
    }
    if (argc < 2)
        goto usage;
    const char *cmd = argv[1];
    if (strcmp(cmd, "paused") == 0 && argc == 2)
        return cmd_paused();
    if (strcmp(cmd, "create") == 0 && argc == 3)
        return cmd_create(strtoull(argv[2], NULL, 10));
    if (strcmp(cmd, "check") == 0 && argc == 3) {
        attach(atoi(argv[2]), CHANNEL);
        printf("capacity %llu\n", (unsigned long long)capacity);
        return 0;
    }
    if (strcmp(cmd, "mb-read") == 0 && argc == 3)
        return cmd_mb_read(atoi(argv[2]));
    robust_init(); /* every command below may take a lock */
    if (strcmp(cmd, "read") == 0 && (argc == 4 || argc == 5))
        return cmd_read(atoi(argv[2]), atol(argv[3]), argc == 5 ? argv[4] : NULL);
    if (strcmp(cmd, "write") == 0 && (argc == 3 || argc == 4))
        return cmd_write(atoi(argv[2]), 0, argc == 4 ? argv[3] : NULL);
    if (strcmp(cmd, "write-batch") == 0 && argc == 3)
        return cmd_write(atoi(argv[2]), 1, NULL);
    if (strcmp(cmd, "hold") == 0 && (argc == 4 || argc == 5) &&
        (strcmp(argv[3], "producer") == 0 || strcmp(argv[3], "consumer") == 0 ||
         strcmp(argv[3], "writer") == 0) &&
        (argc == 4 || strcmp(argv[4], "pause") == 0 || strcmp(argv[4], "exit") == 0 ||
         strcmp(argv[4], "exec") == 0))
        return cmd_hold(atoi(argv[2]), argv[3], argc == 5 ? argv[4] : "pause");
    if (strcmp(cmd, "mb-publish") == 0 && argc == 4)
        return cmd_mb_publish(atoi(argv[2]), argv[3]);
usage:
    fprintf(stderr, "usage: see the comment at the top of channel_reader.c\n");
    return EXIT_USAGE;
}
