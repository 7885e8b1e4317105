/* A UART's console data path in C: transmitted bytes go to a buffer, not to Python.
 *
 * Why C: a guest console writes one byte at a time and polls the status register before
 * each; through the Unicorn binding each of those accesses is a Python callback of a few
 * microseconds. Here the two accesses of the common case are answered in C:
 *   - a write to the data register while the device model says a write is nothing but
 *     "send this byte" (`tx_fast`, which the model keeps up to date) joins the buffer;
 *   - a read of the status register returns `status`, which the model also keeps current.
 * The buffer goes to the Python `sink` at each line end, when it is full, before any other
 * access to the device reaches Python (so the model sees, and the sink gets, everything in
 * order), at the second status read in a row (a guest polling for input after a prompt:
 * a console writing reads the status once per byte), and on `flush()` (the engine calls
 * it whenever its vCPU stops: idle, slice end, exit). Every other access calls the
 * device's own Python read/write, as before.
 *
 * One TxPath per device, shared by every vCPU engine; one UartTap per engine maps the
 * device's MMIO region to the callbacks below. Nothing here links against libunicorn:
 * Python hands over uc_mmio_map's address, as for the hypercall trap. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#define TX_CAPACITY 4096

typedef uint64_t (*mmio_read_fn)(void *uc, uint64_t offset, unsigned size, void *user);
typedef void (*mmio_write_fn)(void *uc, uint64_t offset, unsigned size, uint64_t value,
                              void *user);
typedef int (*uc_mmio_map_fn)(void *uc, uint64_t address, uint64_t size, mmio_read_fn read,
                              void *read_user, mmio_write_fn write, void *write_user);

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock; /* guards buf and len */
    pthread_mutex_t emit; /* held from taking bytes out until the sink has them: order */
    char buf[TX_CAPACITY];
    size_t len;
    PyObject *sink;
    volatile int tx_fast;     /* a data write only sends its byte (the model says) */
    volatile uint32_t status; /* the status register's value (the model keeps it) */
    volatile int status_reads; /* status reads since the last data write */
    uint32_t data_offset, status_offset;
    unsigned long long fast_writes, fast_reads;
    int ready;
} TxObject;

static int valid_size(unsigned size)
{
    return size == 1 || size == 2 || size == 4;
}

/* Hand what is buffered to the sink. The caller must not hold the GIL. */
static void tx_emit(TxObject *t)
{
    char local[TX_CAPACITY];
    pthread_mutex_lock(&t->lock);
    size_t n = t->len;
    if (!n) {
        pthread_mutex_unlock(&t->lock);
        return;
    }
    memcpy(local, t->buf, n);
    t->len = 0;
    pthread_mutex_lock(&t->emit); /* lock order: lock, then emit */
    pthread_mutex_unlock(&t->lock);
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *data = PyBytes_FromStringAndSize(local, (Py_ssize_t)n);
    PyObject *r = data ? PyObject_CallOneArg(t->sink, data) : NULL;
    if (!r)
        PyErr_WriteUnraisable(t->sink); /* the sink's own errors are its to keep */
    Py_XDECREF(r);
    Py_XDECREF(data);
    PyGILState_Release(gil);
    pthread_mutex_unlock(&t->emit);
}

static void tx_put(TxObject *t, char c)
{
    pthread_mutex_lock(&t->lock);
    t->buf[t->len++] = c;
    int full = c == '\n' || t->len == TX_CAPACITY;
    pthread_mutex_unlock(&t->lock);
    if (full)
        tx_emit(t);
}

static int tx_init(TxObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sink", "data_offset", "status_offset", NULL};
    PyObject *sink;
    unsigned int data_offset, status_offset;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OII", kwlist, &sink, &data_offset,
                                     &status_offset))
        return -1;
    if (!PyCallable_Check(sink)) {
        PyErr_SetString(PyExc_TypeError, "sink must be callable");
        return -1;
    }
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "TxPath already initialised");
        return -1;
    }
    pthread_mutex_init(&self->lock, NULL);
    pthread_mutex_init(&self->emit, NULL);
    self->ready = 1;
    self->len = 0;
    self->data_offset = data_offset;
    self->status_offset = status_offset;
    Py_XSETREF(self->sink, Py_NewRef(sink));
    return 0;
}

static PyObject *tx_flush(TxObject *self, PyObject *unused)
{
    (void)unused;
    /* Nothing buffered (the usual case at a vCPU stop): keep the GIL, whose hand-over
     * to another thread can cost a switch interval. */
    if (self->ready && self->len) {
        Py_BEGIN_ALLOW_THREADS /* a vCPU thread may hold `emit` while it waits for the GIL */
        tx_emit(self);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static int tx_traverse(TxObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sink);
    return 0;
}

static int tx_clear(TxObject *self)
{
    Py_CLEAR(self->sink);
    return 0;
}

static void tx_dealloc(TxObject *self)
{
    PyObject_GC_UnTrack(self);
    tx_clear(self);
    if (self->ready) {
        pthread_mutex_destroy(&self->lock);
        pthread_mutex_destroy(&self->emit);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef tx_methods[] = {
    {"flush", (PyCFunction)tx_flush, METH_NOARGS, "hand the buffered bytes to the sink now"},
    {NULL}};

static PyMemberDef tx_members[] = {
    {"tx_fast", T_INT, offsetof(TxObject, tx_fast), 0,
     "a data-register write only sends its byte (kept by the device model)"},
    {"status", T_UINT, offsetof(TxObject, status), 0,
     "the status register's value (kept by the device model)"},
    {"fast_writes", T_ULONGLONG, offsetof(TxObject, fast_writes), READONLY,
     "data writes buffered in C"},
    {"fast_reads", T_ULONGLONG, offsetof(TxObject, fast_reads), READONLY,
     "status reads answered in C"},
    {NULL}};

static PyTypeObject TxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvkit.backends._uart.TxPath",
    .tp_basicsize = sizeof(TxObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "TxPath(sink, data_offset, status_offset): a UART's buffered transmit path",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tx_init,
    .tp_dealloc = (destructor)tx_dealloc,
    .tp_traverse = (traverseproc)tx_traverse,
    .tp_clear = (inquiry)tx_clear,
    .tp_methods = tx_methods,
    .tp_members = tx_members,
};

/* ------------------------------------------------------------------------------------
 * UartTap: one engine's MMIO mapping of the device. */
typedef struct {
    PyObject_HEAD
    TxObject *tx;
    PyObject *read;  /* read(offset, size) -> int: the device model, through the engine */
    PyObject *write; /* write(offset, size, value) */
} TapObject;

static uint64_t tap_read(void *uc, uint64_t offset, unsigned size, void *user)
{
    (void)uc;
    TapObject *p = user;
    TxObject *t = p->tx;
    if (offset == t->status_offset && valid_size(size)) {
        __atomic_fetch_add(&t->fast_reads, 1, __ATOMIC_RELAXED);
        if (++t->status_reads >= 2 && t->len) /* polling, not writing: show the prompt */
            tx_emit(t);
        return t->status;
    }
    tx_emit(t);
    PyGILState_STATE gil = PyGILState_Ensure();
    uint64_t value = 0;
    PyObject *r = PyObject_CallFunction(p->read, "KI", (unsigned long long)offset, size);
    if (r) {
        value = PyLong_AsUnsignedLongLongMask(r);
        Py_DECREF(r);
    }
    if (PyErr_Occurred())
        PyErr_WriteUnraisable(p->read); /* the engine's wrapper never raises */
    PyGILState_Release(gil);
    return value;
}

static void tap_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *user)
{
    (void)uc;
    TapObject *p = user;
    TxObject *t = p->tx;
    if (offset == t->data_offset && valid_size(size) && t->tx_fast) {
        __atomic_fetch_add(&t->fast_writes, 1, __ATOMIC_RELAXED);
        t->status_reads = 0;
        tx_put(t, (char)(value & 0xFF));
        return;
    }
    tx_emit(t);
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(p->write, "KIK", (unsigned long long)offset, size,
                                        (unsigned long long)value);
    Py_XDECREF(r);
    if (PyErr_Occurred())
        PyErr_WriteUnraisable(p->write);
    PyGILState_Release(gil);
}

static int tap_init(TapObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"uc", "mmio_map", "base", "size", "tx", "read", "write", NULL};
    unsigned long long uc, mmio_map, base, size;
    PyObject *tx, *read, *write;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKKKOOO", kwlist, &uc, &mmio_map, &base,
                                     &size, &tx, &read, &write))
        return -1;
    if (!PyObject_TypeCheck(tx, &TxType) || !((TxObject *)tx)->ready) {
        PyErr_SetString(PyExc_TypeError, "tx must be an initialised TxPath");
        return -1;
    }
    if (!PyCallable_Check(read) || !PyCallable_Check(write)) {
        PyErr_SetString(PyExc_TypeError, "read and write must be callable");
        return -1;
    }
    if (self->tx) {
        PyErr_SetString(PyExc_RuntimeError, "UartTap already mapped");
        return -1;
    }
    self->tx = (TxObject *)Py_NewRef(tx);
    self->read = Py_NewRef(read);
    self->write = Py_NewRef(write);
    uc_mmio_map_fn map = (uc_mmio_map_fn)(uintptr_t)mmio_map;
    int err = map((void *)(uintptr_t)uc, base, size, tap_read, self, tap_write, self);
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "uc_mmio_map failed with error %d", err);
        return -1;
    }
    return 0;
}

static int tap_traverse(TapObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tx);
    Py_VISIT(self->read);
    Py_VISIT(self->write);
    return 0;
}

static int tap_clear(TapObject *self)
{
    Py_CLEAR(self->tx);
    Py_CLEAR(self->read);
    Py_CLEAR(self->write);
    return 0;
}

static void tap_dealloc(TapObject *self)
{
    PyObject_GC_UnTrack(self);
    tap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject TapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvkit.backends._uart.UartTap",
    .tp_basicsize = sizeof(TapObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "UartTap(uc, mmio_map, base, size, tx, read, write): one engine's mapping; "
              "keep it alive as long as the engine",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tap_init,
    .tp_dealloc = (destructor)tap_dealloc,
    .tp_traverse = (traverseproc)tap_traverse,
    .tp_clear = (inquiry)tap_clear,
};

static struct PyModuleDef uart_module = {
    PyModuleDef_HEAD_INIT, "_uart", "C data path for UART consoles", -1, NULL,
};

PyMODINIT_FUNC PyInit__uart(void)
{
    if (PyType_Ready(&TxType) < 0 || PyType_Ready(&TapType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&uart_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "TxPath", (PyObject *)&TxType) < 0 ||
        PyModule_AddObjectRef(m, "UartTap", (PyObject *)&TapType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
