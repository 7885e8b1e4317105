/* A direct handler's call, shared by the arm64 and x86 traps (docs/hot-path.md).
 *
 * handler(vcpu, a, b, c) with plain integers returns the call's results. A handler that
 * raises, or returns something that is not a sequence (what Call.answer(*r) would refuse),
 * is answered by on_error(vcpu, function, exc), as the dispatcher answers a failed
 * handler. The caller holds the GIL. */
#ifndef PVKIT_DIRECT_H
#define PVKIT_DIRECT_H
#include <Python.h>
#include <stdint.h>

/* The results as a PySequence_Fast, or NULL with the exception set. */
static PyObject *pvkit_call_direct(PyObject *handler, PyObject *vcpu, const uint64_t args[3],
                                   PyObject *on_error, uint64_t function)
{
    PyObject *argv[4] = {vcpu, PyLong_FromUnsignedLongLong(args[0]),
                         PyLong_FromUnsignedLongLong(args[1]),
                         PyLong_FromUnsignedLongLong(args[2])};
    PyObject *r = NULL;
    if (argv[1] && argv[2] && argv[3])
        r = PyObject_Vectorcall(handler, argv, 4, NULL);
    for (int i = 1; i < 4; i++)
        Py_XDECREF(argv[i]);
    if (r) {
        PyObject *fast = PySequence_Fast(r, "a direct handler returns a sequence of results");
        Py_DECREF(r);
        r = fast;
    }
    if (r || !on_error || !PyErr_ExceptionMatches(PyExc_Exception))
        return r;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *idobj = PyLong_FromUnsignedLongLong(function);
    if (idobj && value) {
        if (tb)
            PyException_SetTraceback(value, tb);
        PyObject *eargv[3] = {vcpu, idobj, value};
        PyObject *answer = PyObject_Vectorcall(on_error, eargv, 3, NULL);
        r = answer ? PySequence_Fast(answer, "on_error returns the preset results") : NULL;
        Py_XDECREF(answer);
    }
    Py_XDECREF(idobj);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return r;
}
#endif
