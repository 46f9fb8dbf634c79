/* Keys: ftok(3).  (Keys from names, FNV-1a, are computed in keys.py.) */
#include "shmsem.h"

static PyObject *
ipc_ftok(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ss_state *st = ss_state_from_module(module);
    PyObject *path = NULL;
    int proj;
    if (!ss_check_nargs("ftok", nargs, 2, 2))
        return NULL;
    if (ss_arg_int(args[1], "proj_id", &proj) < 0)
        return NULL;
    if (proj < 1 || proj > 255) {
        PyErr_Format(PyExc_ValueError,
                     "proj_id must be in [1, 255] (ftok uses only its low 8 bits), not %d",
                     proj);
        return NULL;
    }
    if (!PyUnicode_FSConverter(args[0], &path))
        return NULL;
    key_t key = ftok(PyBytes_AS_STRING(path), proj);
    if (key == (key_t)-1) {
        int err = errno;
        PyObject *detail = PyUnicode_FromFormat("path %R", args[0]);
        Py_DECREF(path);
        const char *text = detail ? PyUnicode_AsUTF8(detail) : NULL;
        if (text != NULL)
            ss_raise(st, "os", err, "ftok", NULL, -1, text);
        Py_XDECREF(detail);
        return NULL;
    }
    Py_DECREF(path);
    return ss_key_object(key);
}


PyMethodDef ss_key_functions[] = {
    {"ftok", (PyCFunction)(void (*)(void))ipc_ftok, METH_FASTCALL,
     "ftok(path, proj_id, /)\n--\n\nftok(3): a key from an existing path and a project id."},
    {NULL, NULL, 0, NULL},
};
