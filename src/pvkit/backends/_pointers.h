/* Where the engine keeps the registers a trap reads and writes (UC_CTL_REG_POINTER), as
 * Python hands them over, shared by the arm64 and x86 traps (docs/hot-path.md). */
#ifndef PVKIT_POINTERS_H
#define PVKIT_POINTERS_H
#include <Python.h>
#include <stdint.h>

/* `pointers`: None (0: the trap makes register calls), or exactly `n` nonzero addresses
 * into `out` (1); -1 with ValueError or TypeError otherwise, `which` naming them. */
static int pvkit_register_pointers(PyObject *pointers, uint64_t **out, Py_ssize_t n,
                                   const char *which)
{
    if (pointers == Py_None)
        return 0;
    PyObject *seq = PySequence_Fast(pointers, "pointers must be a sequence or None");
    if (!seq)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "pointers: %s", which);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred() || a == 0) {
            Py_DECREF(seq);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "pointers: a register without an address");
            return -1;
        }
        out[i] = (uint64_t *)(uintptr_t)a;
    }
    Py_DECREF(seq);
    return 1;
}

#endif
