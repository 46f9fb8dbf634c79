/* Declarations shared by sem.c and ipc.c. */
#ifndef SHMSEM_SEM_H
#define SHMSEM_SEM_H

#include "shmsem.h"

typedef struct {
    PyObject_HEAD
    ss_state *state;
    int semid;             /* -1 when unbound or closed */
    unsigned short num;
    int undo;
    int is_lock;           /* release() requires a prior acquire() by this process */
    int held;
    pid_t held_pid;
    int skip_probe;        /* acquires left that go straight to the blocking wait */
    int skip_len;          /* how many to skip after the next failed probe */
    PyObject *key;         /* for error messages only */
    PyObject *weakreflist;
} SemObject;

int ss_semop(ss_state *st, int semid, struct sembuf *ops, struct sembuf *nowait_ops, size_t n,
             int blocking, const ss_deadline *dl, PyObject *key);
/* As ss_semop; with probe false, skip the IPC_NOWAIT attempt and wait at once.
 * *probe_failed tells whether an attempt was made and found it would block. */
int ss_semop_ex(ss_state *st, int semid, struct sembuf *ops, struct sembuf *nowait_ops,
                size_t n, int blocking, int probe, const ss_deadline *dl, PyObject *key,
                int *probe_failed);

#endif
