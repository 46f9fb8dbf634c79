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
    PyObject *key;         /* for error messages only */
    PyObject *weakreflist;
} SemObject;

int ss_semop(ss_state *st, int semid, struct sembuf *ops, struct sembuf *nowait_ops, size_t n,
             int blocking, const ss_deadline *dl, PyObject *key);

#endif
