/* The module: its definition and state, and the registration of every
 * type, function table and constant that the other files define.  Nothing
 * else lives here (docs/architecture.md). */
#include "shmsem.h"

/* ------------------------------------------------------------------------ */
/* State lookup for objects of our types or of Python subclasses of them.
 * (PyType_GetModuleByDef would do this, but only from Python 3.11.) */

ss_state *
ss_state_from_type(PyTypeObject *tp)
{
    for (; tp != NULL; tp = tp->tp_base) {
        if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE))
            continue;
        PyObject *mod = ((PyHeapTypeObject *)tp)->ht_module;
        if (mod != NULL && PyModule_Check(mod) && PyModule_GetDef(mod) == &shmsem_module_def)
            return ss_state_from_module(mod);
    }
    PyErr_SetString(PyExc_SystemError, "shmsem._core: type is not from this module");
    return NULL;
}

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
PyObject *
ss_no_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyErr_Format(PyExc_TypeError, "cannot create '%.100s' instances", type->tp_name);
    return NULL;
}
#endif

/* ------------------------------------------------------------------------ */
/* Module init. */

static int
add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, spec, NULL);
    if (tp == NULL)
        return -1;
    *slot = (PyTypeObject *)tp;
    Py_INCREF(tp);
    if (PyModule_AddObject(module, strrchr(spec->name, '.') + 1, tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}

static int
shmsem_exec(PyObject *module)
{
    ss_state *st = ss_state_from_module(module);

    PyObject *queue = PyImport_ImportModule("queue");
    if (queue == NULL)
        return -1;
    st->queue_empty = PyObject_GetAttrString(queue, "Empty");
    st->queue_full = PyObject_GetAttrString(queue, "Full");
    Py_DECREF(queue);
    if (st->queue_empty == NULL || st->queue_full == NULL)
        return -1;

    st->pin_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ss_pin_spec, NULL);
    if (st->pin_type == NULL)
        return -1;
    if (add_type(module, &ss_segment_spec, &st->segment_type) < 0 ||
        add_type(module, &ss_sem_spec, &st->sem_type) < 0 ||
        add_type(module, &ss_channel_spec, &st->channel_type) < 0 ||
        add_type(module, &ss_mailbox_spec, &st->mailbox_type) < 0)
        return -1;

    PyMethodDef *tables[] = {ss_boundary_functions, ss_shm_functions, ss_sem_functions,
                             ss_msg_functions, ss_key_functions, ss_lock_functions};
    for (size_t i = 0; i < sizeof tables / sizeof *tables; i++)
        if (PyModule_AddFunctions(module, tables[i]) < 0)
            return -1;
    if (ss_channel_module_init(module) < 0 || ss_mailbox_module_init(module) < 0)
        return -1;

#define ADD_INT(name, value) \
    if (PyModule_AddIntConstant(module, name, value) < 0) return -1
    ADD_INT("IPC_PRIVATE", IPC_PRIVATE);
    ADD_INT("IPC_CREAT", IPC_CREAT);
    ADD_INT("IPC_EXCL", IPC_EXCL);
    ADD_INT("IPC_NOWAIT", IPC_NOWAIT);
    ADD_INT("SEM_UNDO", SEM_UNDO);
    ADD_INT("SHM_RDONLY", SHM_RDONLY);
    ADD_INT("SHM_DEST", SHM_DEST);
    ADD_INT("SHM_LOCKED", SHM_LOCKED);
    ADD_INT("SEMVMX", SS_SEMVMX);
    ADD_INT("GETVAL", GETVAL);
    ADD_INT("SETVAL", SETVAL);
    ADD_INT("GETPID", GETPID);
    ADD_INT("GETNCNT", GETNCNT);
    ADD_INT("GETZCNT", GETZCNT);
    ADD_INT("IPC_RMID", IPC_RMID);
    ADD_INT("FRAME_HEADER_SIZE", 4);
#undef ADD_INT
    if (PyModule_AddStringConstant(module, "__version__", SHMSEM_VERSION) < 0)
        return -1;
    return 0;
}

static int
shmsem_traverse(PyObject *module, visitproc visit, void *arg)
{
    ss_state *st = ss_state_from_module(module);
    Py_VISIT(st->error_factory);
    Py_VISIT(st->queue_empty);
    Py_VISIT(st->queue_full);
    Py_VISIT(st->segment_type);
    Py_VISIT(st->pin_type);
    Py_VISIT(st->sem_type);
    Py_VISIT(st->channel_type);
    Py_VISIT(st->mailbox_type);
    return 0;
}

static int
shmsem_clear(PyObject *module)
{
    ss_state *st = ss_state_from_module(module);
    Py_CLEAR(st->error_factory);
    Py_CLEAR(st->queue_empty);
    Py_CLEAR(st->queue_full);
    Py_CLEAR(st->segment_type);
    Py_CLEAR(st->pin_type);
    Py_CLEAR(st->sem_type);
    Py_CLEAR(st->channel_type);
    Py_CLEAR(st->mailbox_type);
    return 0;
}

static void
shmsem_free(void *module)
{
    shmsem_clear((PyObject *)module);
}

static PyModuleDef_Slot shmsem_slots[] = {
    {Py_mod_exec, shmsem_exec},
    {0, NULL},
};

struct PyModuleDef shmsem_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmsem._core",
    .m_doc = "The C core of shmsem: System V IPC syscalls, GIL-free waits, futexes.",
    .m_size = sizeof(ss_state),
    .m_methods = NULL, /* every table is added in shmsem_exec */
    .m_slots = shmsem_slots,
    .m_traverse = shmsem_traverse,
    .m_clear = shmsem_clear,
    .m_free = shmsem_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&shmsem_module_def);
}
