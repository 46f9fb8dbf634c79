/* On-memory layouts of Channel and Mailbox segments (version 2).
 *
 * docs/protocol.md is the normative description; this header is its C form,
 * and the static asserts below pin every offset the document gives.  All
 * integers are little-endian and naturally aligned.  Fields shared between
 * processes are accessed only through C11 atomics.
 */
#ifndef SHMSEM_LAYOUT_H
#define SHMSEM_LAYOUT_H

#include "shmsem.h" /* first: it sets the feature macros */

#include <stddef.h>

#define SS_CACHELINE 64

/* "SHMSEMCH" and "SHMSEMMB" read as little-endian u64. */
#define SS_CHANNEL_MAGIC UINT64_C(0x48434d45534d4853)
#define SS_MAILBOX_MAGIC UINT64_C(0x424d4d45534d4853)
/* Version 2: the locks became robust futexes (48 bytes each). */
#define SS_LAYOUT_VERSION 2

/* Shared atomics must be lock-free, or two processes would each use a lock
 * of their own and race. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(sizeof(long long) == 8, "64-bit atomics are long long");

/* Record kinds (low 8 bits of a Channel record's flags word). */
enum {
    SS_KIND_PAD = 0,         /* no message: consumers skip it (see channel_put) */
    SS_KIND_BYTES = 1,       /* raw bytes: put_bytes */
    SS_KIND_PICKLE = 2,      /* a pickle, protocol 5, no out-of-band buffers */
    SS_KIND_PICKLE_OOB = 3,  /* a pickle with out-of-band buffers (see channel.py) */
};

/* Common prefix of both headers: the first cache line. */
typedef struct {
    _Atomic uint64_t magic;     /* written last by the creator (release) */
    uint32_t version;
    uint32_t header_size;       /* offset of the ring (Channel) or of cell 0 (Mailbox) */
    uint64_t capacity;          /* ring bytes (Channel) or max value bytes (Mailbox) */
    uint64_t cell_stride;       /* Mailbox: bytes from cell 0 to cell 1; Channel: 0 */
    uint32_t creator_pid;
    uint32_t reserved0;
    uint64_t reserved[3];
} ss_common_header;

/* ---------------------------------------------------------------------- */
/* Channel: a byte ring of variable-size records.
 *
 * tail and head are byte counts since creation (they only grow); the byte at
 * stream offset x lives at ring[x % capacity].  A record is an 8-byte header
 * {u32 length, u32 flags} followed by the payload, padded to a multiple of 8,
 * and may wrap around the end of the ring.  Producers own tail (under the
 * producer lock), consumers own head (under the consumer lock). */

typedef struct {
    ss_common_header common;                 /*   0 */

    ss_plock prod_lock;                      /*  64 */
    _Atomic uint64_t tail;                   /* 112 */
    _Atomic uint64_t put_count;              /* 120 */

    ss_plock cons_lock;                      /* 128 */
    _Atomic uint64_t head;                   /* 176 */
    _Atomic uint64_t get_count;              /* 184 */

    _Atomic uint32_t data_event;             /* 192  futex: consumers sleep here */
    _Atomic uint32_t space_event;            /* 196  futex: producers sleep here */
    _Atomic uint32_t consumers_waiting;      /* 200  1 while a consumer sleeps */
    _Atomic uint32_t producers_waiting;      /* 204  1 while a producer sleeps */
    uint64_t reserved[6];
} ss_channel_header;                         /* 256: the ring starts here */

#define SS_CHANNEL_HEADER_SIZE 256
#define SS_RECORD_HEADER 8

_Static_assert(sizeof(ss_plock) == SS_PLOCK_SIZE, "plock layout");
_Static_assert(offsetof(ss_plock, recoveries) == 8, "plock layout");
_Static_assert(offsetof(ss_plock, links) == SS_PLOCK_LINKS, "plock layout");
_Static_assert(sizeof(ss_common_header) == 64, "common header layout");
_Static_assert(offsetof(ss_channel_header, prod_lock) == 64, "layout");
_Static_assert(offsetof(ss_channel_header, tail) == 112, "layout");
_Static_assert(offsetof(ss_channel_header, put_count) == 120, "layout");
_Static_assert(offsetof(ss_channel_header, cons_lock) == 128, "layout");
_Static_assert(offsetof(ss_channel_header, head) == 176, "layout");
_Static_assert(offsetof(ss_channel_header, get_count) == 184, "layout");
_Static_assert(offsetof(ss_channel_header, data_event) == 192, "layout");
_Static_assert(offsetof(ss_channel_header, space_event) == 196, "layout");
_Static_assert(offsetof(ss_channel_header, consumers_waiting) == 200, "layout");
_Static_assert(offsetof(ss_channel_header, producers_waiting) == 204, "layout");
_Static_assert(sizeof(ss_channel_header) == SS_CHANNEL_HEADER_SIZE, "layout");

/* ---------------------------------------------------------------------- */
/* Mailbox: two cells, each guarded by its own seqlock counter.  The writer
 * always fills the cell that is *not* current, then publishes it by storing
 * state = (seq << 1) | cell in one atomic write.  A writer that dies midway
 * leaves an odd counter on the cell that is not current, so readers keep
 * getting the last complete value. */

typedef struct {
    ss_common_header common;                 /*   0 */

    ss_plock writer_lock;                    /*  64 */
    _Atomic uint64_t state;                  /* 112  (seq << 1) | current cell */
    _Atomic uint32_t event;                  /* 120  futex: wait() sleeps here */
    _Atomic uint32_t waiting;                /* 124  1 while a reader sleeps */
} ss_mailbox_header;                         /* 128: cell 0 starts here */

typedef struct {
    _Atomic uint64_t lock_seq;               /* +0  seqlock: odd while being written */
    _Atomic uint64_t seq;                    /* +8  publish sequence number of the value */
    _Atomic uint64_t length;                 /* +16 value length in bytes */
    uint64_t reserved[5];
} ss_mailbox_cell;                           /* 64: the value bytes follow */

#define SS_MAILBOX_HEADER_SIZE 128
#define SS_MAILBOX_CELL_HEADER 64

_Static_assert(offsetof(ss_mailbox_header, writer_lock) == 64, "layout");
_Static_assert(offsetof(ss_mailbox_header, state) == 112, "layout");
_Static_assert(offsetof(ss_mailbox_header, event) == 120, "layout");
_Static_assert(offsetof(ss_mailbox_header, waiting) == 124, "layout");
_Static_assert(sizeof(ss_mailbox_header) == SS_MAILBOX_HEADER_SIZE, "layout");
_Static_assert(sizeof(ss_mailbox_cell) == SS_MAILBOX_CELL_HEADER, "layout");

#endif
