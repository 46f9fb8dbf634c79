/*
 * dotnet_like: a command-line stand-in for a program that uses the .NET helper
 * "Shanewas.PosixIpc", for shmsem's interop tests (tests/test_interop_c.py).
 *
 * It issues the same System V calls, with the same flags, in the same order as
 * the helper does, so that whatever shmsem does with these objects is what it
 * would do with a real .NET peer.  It is written from the helper's documented
 * behaviour (docs/interop.md), not from its code.
 *
 * Where the helper has a flaw that would make a test crash rather than fail,
 * this program does the safe thing instead, and says so in a comment:
 *   - Read() trusts the length header; here a length that does not fit the
 *     segment is refused (exit 4) instead of reading past the mapping.
 *   - AttachExisting() reads the segment size at a hard-coded struct offset;
 *     here it comes from struct shmid_ds (IPC_STAT).
 * Its other flaw, Dispose() removing a segment it only opened, is reproduced on
 * purpose by the "dispose" command, so the tests can show what it does to a
 * Python owner.
 *
 * Usage (KEY and SEMID accept decimal, 0x hex and negative numbers):
 *   write KEY SIZE TEXT       constructor(KEY, SIZE) + Write(TEXT as UTF-8 bytes)
 *   write-stdin KEY SIZE      constructor(KEY, SIZE) + Write(all of stdin)
 *   read KEY                  AttachExisting(KEY) + Read(); payload to stdout
 *   writehdr KEY VALUE        AttachExisting(KEY), then store VALUE as the raw
 *                             int32 length header (simulates a corrupt writer)
 *   dispose KEY SIZE          constructor(KEY, SIZE) + Dispose() (detach + IPC_RMID)
 *   semcreate KEY             CreateSemaphore(KEY); prints the semid
 *   semwait SEMID             SemaphoreWait(SEMID) (blocks, retries on EINTR)
 *   semsignal SEMID           SemaphoreSignal(SEMID)
 *   semdestroy SEMID          DestroySemaphore(SEMID) (an id already gone is fine)
 *   hash STRING...            GetDeterministicHashCode of each (UTF-8) argument,
 *                             one decimal result per line
 *   pong KEY SIZE REQKEY REPKEY N
 *                             answer N requests "ping <i> <text>" with
 *                             "pong <i> <text>", checking i counts up from 0
 *   ping KEY SIZE REQKEY REPKEY N
 *                             send N requests "ping <i> <text(i)>" and check
 *                             each reply is "pong <i> <text(i)>"
 *
 * Exit codes: 0 ok; 1 a syscall failed; 2 usage; 3 the hash overflows (where
 * .NET's Math.Abs throws OverflowException); 4 a frame does not fit (Write
 * refused, or Read found a corrupt header); 5 ping/pong protocol mismatch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/types.h>

#define EXIT_SYSCALL 1
#define EXIT_USAGE 2
#define EXIT_OVERFLOW 3
#define EXIT_FRAME 4
#define EXIT_PROTOCOL 5

#define HEADER_SIZE 4

/* glibc leaves union semun to the caller (semctl(2)). */
union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

static void
die_errno(const char *call, long long what)
{
    int err = errno;
    fprintf(stderr, "dotnet_like: %s(%lld) failed: %s (errno %d)\n", call, what,
            strerror(err), err);
    exit(EXIT_SYSCALL);
}

static void
usage(const char *msg)
{
    fprintf(stderr, "dotnet_like: %s (see the comment at the top of dotnet_like.c)\n", msg);
    exit(EXIT_USAGE);
}

/* A whole-string integer in [lo, hi]; decimal, 0x hex or negative. */
static long long
parse_int(const char *s, long long lo, long long hi, const char *what)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "dotnet_like: bad %s '%s' (want an integer in [%lld, %lld])\n",
                what, s, lo, hi);
        exit(EXIT_USAGE);
    }
    return v;
}

static key_t
parse_key(const char *s)
{
    /* Like shmsem: the signed and the unsigned spelling of a 32-bit key. */
    long long v = parse_int(s, INT32_MIN, UINT32_MAX, "key");
    return (key_t)(int32_t)(uint32_t)v;
}

/* ---- shared memory: the helper's instance members ---------------------- */

typedef struct {
    int shmid;
    unsigned char *addr;
    size_t size;            /* the size the helper believes the segment has */
} Helper;

/* new PosixIpcHelper(key, size): create or open, then attach. */
static Helper
helper_new(key_t key, size_t size)
{
    Helper h;
    h.shmid = shmget(key, size, IPC_CREAT | 0600);
    if (h.shmid < 0)
        die_errno("shmget", key);
    void *p = shmat(h.shmid, NULL, 0);
    if (p == (void *)-1)
        die_errno("shmat", h.shmid);
    h.addr = p;
    h.size = size;
    return h;
}

/* PosixIpcHelper.AttachExisting(key).  The size comes from IPC_STAT through
 * the real struct shmid_ds, never from a hard-coded offset. */
static Helper
helper_attach_existing(key_t key)
{
    Helper h;
    struct shmid_ds ds;
    h.shmid = shmget(key, 0, 0);
    if (h.shmid < 0)
        die_errno("shmget", key);
    if (shmctl(h.shmid, IPC_STAT, &ds) < 0)
        die_errno("shmctl(IPC_STAT)", h.shmid);
    void *p = shmat(h.shmid, NULL, 0);
    if (p == (void *)-1)
        die_errno("shmat", h.shmid);
    h.addr = p;
    h.size = ds.shm_segsz;
    return h;
}

static void
helper_detach(Helper *h)
{
    if (shmdt(h->addr) < 0)
        die_errno("shmdt", h->shmid);
    h->addr = NULL;
}

/* Write(byte[]): int32 little-endian length, then the bytes; refuses
 * data.Length + 4 > size. */
static void
helper_write(Helper *h, const void *data, size_t len)
{
    if (len > INT32_MAX || len + HEADER_SIZE > h->size) {
        fprintf(stderr, "dotnet_like: Write refused: %zu payload bytes + %d header bytes "
                "do not fit %zu bytes\n", len, HEADER_SIZE, h->size);
        exit(EXIT_FRAME);
    }
    uint32_t n = (uint32_t)len;
    unsigned char hdr[HEADER_SIZE] = {
        (unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
        (unsigned char)(n >> 24),
    };
    /* The helper writes the length first, then the bytes. */
    memcpy(h->addr, hdr, HEADER_SIZE);
    memcpy(h->addr + HEADER_SIZE, data, len);
}

/* Read(): the int32 little-endian length, refused if negative, then that many
 * bytes.  The helper trusts a positive length; this refuses one that does not
 * fit the segment, as every reader should. */
static unsigned char *
helper_read(Helper *h, size_t *out_len)
{
    if (h->size < HEADER_SIZE) {
        fprintf(stderr, "dotnet_like: Read: segment of %zu bytes has no room for a header\n",
                h->size);
        exit(EXIT_FRAME);
    }
    const unsigned char *b = h->addr;
    int32_t len = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                            (uint32_t)b[3] << 24);
    if (len < 0 || (size_t)len > h->size - HEADER_SIZE) {
        fprintf(stderr, "dotnet_like: Read: corrupt length header %ld for a %zu-byte segment\n",
                (long)len, h->size);
        exit(EXIT_FRAME);
    }
    unsigned char *out = malloc((size_t)len + 1);
    if (out == NULL) {
        fprintf(stderr, "dotnet_like: out of memory\n");
        exit(EXIT_SYSCALL);
    }
    memcpy(out, b + HEADER_SIZE, (size_t)len);
    out[len] = '\0';
    *out_len = (size_t)len;
    return out;
}

/* Dispose(): detach, then IPC_RMID -- even when this handle only opened the
 * segment.  That is the helper's flaw, reproduced here on purpose. */
static void
helper_dispose(Helper *h)
{
    helper_detach(h);
    if (shmctl(h->shmid, IPC_RMID, NULL) < 0)
        die_errno("shmctl(IPC_RMID)", h->shmid);
}

/* ---- semaphores: the helper's static members ---------------------------- */

static int
create_semaphore(key_t key)
{
    int semid = semget(key, 1, IPC_CREAT | IPC_EXCL | 0600);
    if (semid >= 0) {
        union semun arg;
        arg.val = 0;
        if (semctl(semid, 0, SETVAL, arg) < 0)
            die_errno("semctl(SETVAL)", semid);
        return semid;
    }
    if (errno != EEXIST)
        die_errno("semget(IPC_CREAT|IPC_EXCL)", key);
    /* Already there: open it and leave its value alone. */
    semid = semget(key, 1, 0600);
    if (semid < 0)
        die_errno("semget", key);
    return semid;
}

static void
semaphore_op(int semid, short delta)
{
    struct sembuf op;
    op.sem_num = 0;
    op.sem_op = delta;
    op.sem_flg = 0;   /* no SEM_UNDO, no IPC_NOWAIT */
    int rc;
    do {
        rc = semop(semid, &op, 1);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        die_errno(delta < 0 ? "semop(wait)" : "semop(signal)", semid);
}

static void
destroy_semaphore(int semid)
{
    if (semctl(semid, 0, IPC_RMID) < 0 && errno != EINVAL && errno != ENOENT)
        die_errno("semctl(IPC_RMID)", semid);
}

/* ---- GetDeterministicHashCode ------------------------------------------- */

/* Decode strict UTF-8 into UTF-16 code units.  Returns the number of units,
 * or -1 for input that is not valid UTF-8 (overlong forms, surrogates and
 * values above U+10FFFF included). */
static long
utf8_to_utf16(const unsigned char *s, size_t n, uint16_t *out)
{
    size_t i = 0;
    long k = 0;
    while (i < n) {
        uint32_t cp;
        unsigned char c = s[i];
        size_t extra;
        uint32_t min;
        if (c < 0x80) {
            cp = c; extra = 0; min = 0;
        } else if ((c & 0xE0) == 0xC0) {
            cp = c & 0x1F; extra = 1; min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            cp = c & 0x0F; extra = 2; min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            cp = c & 0x07; extra = 3; min = 0x10000;
        } else {
            return -1;
        }
        if (extra > n - i - 1)
            return -1;
        for (size_t j = 1; j <= extra; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return -1;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return -1;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            out[k++] = (uint16_t)(0xD800 | (cp >> 10));
            out[k++] = (uint16_t)(0xDC00 | (cp & 0x3FF));
        } else {
            out[k++] = (uint16_t)cp;
        }
        i += extra + 1;
    }
    return k;
}

/* FNV-1a 32-bit over UTF-16 code units, read as a signed int32, then its
 * absolute value.  Returns 0 and sets *overflow for the one hash (INT32_MIN)
 * whose absolute value does not fit, where .NET's Math.Abs throws. */
static int32_t
deterministic_hash(const char *str, int *overflow)
{
    size_t n = strlen(str);
    *overflow = 0;
    if (n == 0)
        return 0;
    /* A UTF-8 byte never yields more than one UTF-16 unit. */
    uint16_t *units = malloc(n * sizeof *units);
    if (units == NULL) {
        fprintf(stderr, "dotnet_like: out of memory\n");
        exit(EXIT_SYSCALL);
    }
    long count = utf8_to_utf16((const unsigned char *)str, n, units);
    if (count < 0) {
        fprintf(stderr, "dotnet_like: hash: argument is not valid UTF-8\n");
        exit(EXIT_USAGE);
    }
    uint32_t h = 2166136261u;
    for (long i = 0; i < count; i++) {
        h ^= units[i];
        h *= 16777619u;
    }
    free(units);
    if (h == 0x80000000u) {
        *overflow = 1;
        return 0;
    }
    int32_t signed_h = (int32_t)h;
    return signed_h < 0 ? -signed_h : signed_h;
}

/* ---- ping / pong --------------------------------------------------------- */

/* The text of request i: non-ASCII in 1, 2, 3 and 4 UTF-8 bytes, then a
 * length that varies, so that a reader relying on stale bytes or on a NUL
 * terminator would be caught. */
static size_t
ping_text(long i, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "a\xc3\xa9\xe2\x9c\x93\xf0\x9d\x84\x9e-%ld-", i);
    size_t len = (size_t)n;
    long pad = i % 37;
    for (long j = 0; j < pad && len + 1 < cap; j++)
        buf[len++] = (char)('a' + (i + j) % 26);
    buf[len] = '\0';
    return len;
}

static int
run_pingpong(int is_ping, char **argv)
{
    key_t key = parse_key(argv[0]);
    size_t size = (size_t)parse_int(argv[1], HEADER_SIZE, INT32_MAX, "size");
    key_t reqkey = parse_key(argv[2]);
    key_t repkey = parse_key(argv[3]);
    long n = (long)parse_int(argv[4], 0, LONG_MAX, "count");

    Helper h = helper_new(key, size);
    int req = create_semaphore(reqkey);
    int rep = create_semaphore(repkey);
    printf("ready\n");
    fflush(stdout);

    char text[128], msg[4096];
    for (long i = 0; i < n; i++) {
        size_t got_len;
        unsigned char *got;
        ping_text(i, text, sizeof text);
        if (is_ping) {
            int len = snprintf(msg, sizeof msg, "ping %ld %s", i, text);
            helper_write(&h, msg, (size_t)len);
            semaphore_op(req, 1);
            semaphore_op(rep, -1);
            got = helper_read(&h, &got_len);
            len = snprintf(msg, sizeof msg, "pong %ld %s", i, text);
            if (got_len != (size_t)len || memcmp(got, msg, got_len) != 0) {
                fprintf(stderr, "dotnet_like: ping %ld: reply '%s', expected '%s'\n", i,
                        (char *)got, msg);
                return EXIT_PROTOCOL;
            }
        } else {
            semaphore_op(req, -1);
            got = helper_read(&h, &got_len);
            int len = snprintf(msg, sizeof msg, "ping %ld ", i);
            if (got_len < (size_t)len || memcmp(got, msg, (size_t)len) != 0) {
                fprintf(stderr, "dotnet_like: pong %ld: request '%s', expected it to begin "
                        "with '%s'\n", i, (char *)got, msg);
                return EXIT_PROTOCOL;
            }
            /* Echo the rest verbatim: the requester checks the content. */
            int hlen = snprintf(msg, sizeof msg, "pong %ld ", i);
            size_t rest = got_len - (size_t)len;
            if ((size_t)hlen + rest > sizeof msg) {
                fprintf(stderr, "dotnet_like: pong %ld: request too long\n", i);
                return EXIT_PROTOCOL;
            }
            memcpy(msg + hlen, got + len, rest);
            helper_write(&h, msg, (size_t)hlen + rest);
            semaphore_op(rep, 1);
        }
        free(got);
    }
    /* Detach without Dispose: the Python side owns and removes everything. */
    helper_detach(&h);
    return 0;
}

/* ---- main ---------------------------------------------------------------- */

static unsigned char *
read_all_stdin(size_t *len)
{
    size_t cap = 4096, n = 0;
    unsigned char *buf = malloc(cap);
    if (buf == NULL)
        goto oom;
    for (;;) {
        if (n == cap) {
            cap *= 2;
            unsigned char *bigger = realloc(buf, cap);
            if (bigger == NULL)
                goto oom;
            buf = bigger;
        }
        size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) {
            if (ferror(stdin)) {
                fprintf(stderr, "dotnet_like: reading stdin failed\n");
                exit(EXIT_SYSCALL);
            }
            break;
        }
    }
    *len = n;
    return buf;
oom:
    fprintf(stderr, "dotnet_like: out of memory\n");
    exit(EXIT_SYSCALL);
}

int
main(int argc, char **argv)
{
    if (argc < 2)
        usage("missing command");
    const char *cmd = argv[1];
    int nargs = argc - 2;
    char **args = argv + 2;

    if (strcmp(cmd, "write") == 0 || strcmp(cmd, "write-stdin") == 0) {
        int from_stdin = cmd[5] == '-';
        if (nargs != (from_stdin ? 2 : 3))
            usage(from_stdin ? "write-stdin KEY SIZE" : "write KEY SIZE TEXT");
        key_t key = parse_key(args[0]);
        size_t size = (size_t)parse_int(args[1], 1, INT32_MAX, "size");
        Helper h = helper_new(key, size);
        if (from_stdin) {
            size_t len;
            unsigned char *data = read_all_stdin(&len);
            helper_write(&h, data, len);
            free(data);
        } else {
            helper_write(&h, args[2], strlen(args[2]));
        }
        helper_detach(&h);
        return 0;
    }
    if (strcmp(cmd, "read") == 0) {
        if (nargs != 1)
            usage("read KEY");
        Helper h = helper_attach_existing(parse_key(args[0]));
        size_t len;
        unsigned char *data = helper_read(&h, &len);
        helper_detach(&h);
        if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0) {
            fprintf(stderr, "dotnet_like: writing stdout failed\n");
            return EXIT_SYSCALL;
        }
        free(data);
        return 0;
    }
    if (strcmp(cmd, "writehdr") == 0) {
        if (nargs != 2)
            usage("writehdr KEY VALUE");
        Helper h = helper_attach_existing(parse_key(args[0]));
        if (h.size < HEADER_SIZE)
            usage("segment too small for a header");
        uint32_t v = (uint32_t)(int32_t)parse_int(args[1], INT32_MIN, INT32_MAX, "value");
        h.addr[0] = (unsigned char)v;
        h.addr[1] = (unsigned char)(v >> 8);
        h.addr[2] = (unsigned char)(v >> 16);
        h.addr[3] = (unsigned char)(v >> 24);
        helper_detach(&h);
        return 0;
    }
    if (strcmp(cmd, "dispose") == 0) {
        if (nargs != 2)
            usage("dispose KEY SIZE");
        Helper h = helper_new(parse_key(args[0]),
                              (size_t)parse_int(args[1], 1, INT32_MAX, "size"));
        helper_dispose(&h);
        return 0;
    }
    if (strcmp(cmd, "semcreate") == 0) {
        if (nargs != 1)
            usage("semcreate KEY");
        printf("%d\n", create_semaphore(parse_key(args[0])));
        return fflush(stdout) == 0 ? 0 : EXIT_SYSCALL;
    }
    if (strcmp(cmd, "semwait") == 0 || strcmp(cmd, "semsignal") == 0 ||
        strcmp(cmd, "semdestroy") == 0) {
        if (nargs != 1)
            usage("semwait|semsignal|semdestroy SEMID");
        int semid = (int)parse_int(args[0], 0, INT_MAX, "semid");
        if (cmd[3] == 'w')
            semaphore_op(semid, -1);
        else if (cmd[3] == 's')
            semaphore_op(semid, 1);
        else
            destroy_semaphore(semid);
        return 0;
    }
    if (strcmp(cmd, "hash") == 0) {
        int overflowed = 0;
        for (int i = 0; i < nargs; i++) {
            int overflow;
            int32_t v = deterministic_hash(args[i], &overflow);
            if (overflow) {
                fprintf(stderr, "dotnet_like: hash of argument %d is 0x80000000: Math.Abs "
                        "would throw OverflowException\n", i);
                printf("overflow\n");
                overflowed = 1;
            } else {
                printf("%ld\n", (long)v);
            }
        }
        if (fflush(stdout) != 0)
            return EXIT_SYSCALL;
        return overflowed ? EXIT_OVERFLOW : 0;
    }
    if (strcmp(cmd, "ping") == 0 || strcmp(cmd, "pong") == 0) {
        if (nargs != 5)
            usage("ping|pong KEY SIZE REQKEY REPKEY N");
        return run_pingpong(cmd[1] == 'i', args);
    }
    usage("unknown command");
    return EXIT_USAGE;
}
