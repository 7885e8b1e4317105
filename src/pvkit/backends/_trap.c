/* The hypercall trap in C: the hot path between a guest's HVC/SMC and the dispatcher.
 *
 * Why C: through the Unicorn binding each register access costs ~1.8 us of Python; here a
 * trap reads the argument registers in one batch, answers per-VM constant calls from an
 * answer table without touching Python (or the GIL), and otherwise makes exactly one call
 * into the Python dispatcher and writes the results back in one batch.
 *
 * Nothing here links against libunicorn: Python hands over the addresses of the functions
 * of the library instance the binding already loaded, so both talk to the same engine.
 * The answer-table semantics mirror pvkit.hypercall.answer_table (the ctypes fallback
 * uses that module directly); tests compare the two. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "_direct.h"
#include "_pointers.h"

#define MAX_ARGS 18
#define MAX_RESULTS 4
#define FIRST_BATCH 2 /* x0 and x1: all the answer table needs */

typedef int (*uc_batch_fn)(void *uc, const int *regs, void *const *vals, int count);
typedef int (*uc_stop_fn)(void *uc);
typedef int (*uc_hook_add_fn)(void *uc, size_t *hh, int type, void *callback, void *user_data,
                              uint64_t begin, uint64_t end, ...);
typedef int (*uc_hook_del_fn)(void *uc, size_t hh);

#define UC_HOOK_INTR 1

/* ------------------------------------------------------------------------------------
 * AnswerTable: (function ID, kind, key) -> up to MAX_RESULTS constant results.
 * kind ANY: the answer whatever the arguments; KEYED: the answer when the first argument
 * equals key; DEFAULT: the answer for a keyed function when no KEYED entry matches;
 * DIRECT: no answer but a Python handler(vcpu, x1, x2, x3) -> results to call;
 * VCPU: x1 == key names vCPU results[0]; BY_STATE: x0 = results[c] for a vCPU whose byte in
 * the state array is c (a per-vCPU state query such as PSCI AFFINITY_INFO, when x2 is 0). */
enum {
    KIND_ANY = 0,
    KIND_KEYED = 1,
    KIND_DEFAULT = 2,
    KIND_DIRECT = 3,
    KIND_VCPU = 4,
    KIND_BY_STATE = 5
};

typedef struct {
    uint64_t key;
    uint64_t results[MAX_RESULTS];
    PyObject *handler; /* DIRECT only (owned) */
    uint32_t fid;
    uint8_t kind;
    uint8_t used;
    uint8_t count; /* BY_STATE: how many state codes have an answer */
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    size_t mask;
    Py_ssize_t count;
    Py_ssize_t direct_count;
    PyObject *on_error; /* on_error(vcpu, fid, exc) -> results, for a direct handler that raised */
    Py_buffer states;   /* one power-state byte per vCPU, read without the GIL */
    int has_states;
    int nresults;
    int enabled;
} TableObject;

static inline size_t slot_hash(uint32_t fid, int kind, uint64_t key)
{
    uint64_t h = (uint64_t)fid * 0x9E3779B97F4A7C15ull;
    h ^= (key + (uint64_t)kind) * 0xC2B2AE3D27D4EB4Full;
    return (size_t)(h ^ (h >> 29));
}

static const Slot *table_find(const TableObject *t, uint32_t fid, int kind, uint64_t key)
{
    size_t i = slot_hash(fid, kind, key) & t->mask;
    for (;;) {
        const Slot *s = &t->slots[i];
        if (!s->used)
            return NULL;
        if (s->fid == fid && s->kind == kind && s->key == key)
            return s;
        i = (i + 1) & t->mask;
    }
}

static const Slot *table_lookup(const TableObject *t, uint32_t fid, uint64_t key)
{
    const Slot *s = table_find(t, fid, KIND_ANY, 0);
    if (s)
        return s;
    s = table_find(t, fid, KIND_KEYED, key);
    if (s)
        return s;
    return table_find(t, fid, KIND_DEFAULT, 0);
}

static int table_insert(TableObject *t, uint32_t fid, int kind, uint64_t key,
                        const uint64_t *results)
{
    size_t i = slot_hash(fid, kind, key) & t->mask;
    while (t->slots[i].used) {
        Slot *s = &t->slots[i];
        if (s->fid == fid && s->kind == kind && s->key == key) {
            PyErr_Format(PyExc_ValueError, "duplicate answer-table entry for %#x", fid);
            return -1;
        }
        i = (i + 1) & t->mask;
    }
    Slot *s = &t->slots[i];
    s->used = 1;
    s->fid = fid;
    s->kind = (uint8_t)kind;
    s->key = key;
    if (results)
        memcpy(s->results, results, sizeof s->results);
    return 0;
}

static void table_free_slots(TableObject *t)
{
    if (t->slots)
        for (size_t i = 0; i <= t->mask; i++)
            Py_CLEAR(t->slots[i].handler);
    PyMem_Free(t->slots);
    t->slots = NULL;
}

/* `queries`: (fid, answers by state code, ((key, vCPU index), ...)) for BY_STATE and VCPU. */
static int table_add_queries(TableObject *t, PyObject *queries)
{
    PyObject *seq = PySequence_Fast(queries, "state_queries must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long fid;
        PyObject *answers, *targets;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KOO", &fid, &answers, &targets))
            goto fail;
        uint64_t by_state[MAX_RESULTS] = {0};
        PyObject *as = PySequence_Fast(answers, "answers must be a sequence");
        if (!as)
            goto fail;
        Py_ssize_t na = PySequence_Fast_GET_SIZE(as);
        for (Py_ssize_t j = 0; j < na && j < MAX_RESULTS; j++)
            by_state[j] = PyLong_AsUnsignedLongLongMask(PySequence_Fast_GET_ITEM(as, j));
        Py_DECREF(as);
        if (PyErr_Occurred() || fid > 0xFFFFFFFFull || na < 1 || na > MAX_RESULTS) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a state query needs 1..4 answers");
            goto fail;
        }
        if (table_insert(t, (uint32_t)fid, KIND_BY_STATE, 0, by_state) < 0)
            goto fail;
        Slot *q = (Slot *)table_find(t, (uint32_t)fid, KIND_BY_STATE, 0);
        q->count = (uint8_t)na;
        PyObject *ts = PySequence_Fast(targets, "targets must be a sequence");
        if (!ts)
            goto fail;
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(ts); j++) {
            unsigned long long key, index;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(ts, j), "KK", &key, &index) ||
                (Py_ssize_t)index >= t->states.len) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "a target names no vCPU of the array");
                Py_DECREF(ts);
                goto fail;
            }
            uint64_t r[MAX_RESULTS] = {index};
            if (table_insert(t, (uint32_t)fid, KIND_VCPU, key, r) < 0) {
                Py_DECREF(ts);
                goto fail;
            }
        }
        Py_DECREF(ts);
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

/* `direct`: (fid, handler) pairs for the DIRECT kind. */
static int table_add_direct(TableObject *t, PyObject *direct)
{
    PyObject *seq = PySequence_Fast(direct, "direct must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long fid;
        PyObject *handler;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KO", &fid, &handler))
            goto fail;
        if (fid > 0xFFFFFFFFull || !PyCallable_Check(handler)) {
            PyErr_SetString(PyExc_ValueError, "bad direct entry: (32-bit fid, callable)");
            goto fail;
        }
        if (table_insert(t, (uint32_t)fid, KIND_DIRECT, 0, NULL) < 0)
            goto fail;
        Slot *s = (Slot *)table_find(t, (uint32_t)fid, KIND_DIRECT, 0);
        s->handler = Py_NewRef(handler);
        t->direct_count++;
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

static int table_init(TableObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entries", "nresults", "direct", "on_error", "state_queries",
                             "states", NULL};
    PyObject *entries, *direct = NULL, *on_error = Py_None, *queries = NULL, *states = Py_None;
    int nresults;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oi|OOOO", kwlist, &entries, &nresults,
                                     &direct, &on_error, &queries, &states))
        return -1;
    if (self->has_states) {
        PyBuffer_Release(&self->states);
        self->has_states = 0;
    }
    if (states != Py_None) {
        if (PyObject_GetBuffer(states, &self->states, PyBUF_SIMPLE) < 0)
            return -1;
        self->has_states = 1;
    }
    if (on_error != Py_None && !PyCallable_Check(on_error)) {
        PyErr_SetString(PyExc_TypeError, "on_error must be callable");
        return -1;
    }
    Py_ssize_t ndirect = direct ? PyObject_Length(direct) : 0;
    if (ndirect < 0)
        return -1;
    Py_ssize_t nq = queries ? PyObject_Length(queries) : 0;
    if (nq < 0)
        return -1;
    if (nq && !self->has_states) {
        PyErr_SetString(PyExc_ValueError, "state_queries need the states array");
        return -1;
    }
    if (nq) /* room for a BY_STATE slot and a VCPU slot per vCPU, for each query */
        ndirect += nq * ((Py_ssize_t)self->states.len + 1);
    if (nresults < 1 || nresults > MAX_RESULTS) {
        PyErr_Format(PyExc_ValueError, "nresults must be 1..%d", MAX_RESULTS);
        return -1;
    }
    PyObject *seq = PySequence_Fast(entries, "entries must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t cap = 16;
    while (cap < (size_t)(n + ndirect) * 4)
        cap <<= 1;
    table_free_slots(self);
    self->slots = PyMem_Calloc(cap, sizeof(Slot));
    if (!self->slots) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    self->mask = cap - 1;
    self->nresults = nresults;
    self->count = 0;
    self->direct_count = 0;
    self->enabled = 1;
    Py_XSETREF(self->on_error, on_error == Py_None ? NULL : Py_NewRef(on_error));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PySequence_Fast_GET_ITEM(seq, i);
        unsigned long long fid, key;
        int kind;
        PyObject *results;
        uint64_t r[MAX_RESULTS] = {0};
        if (!PyArg_ParseTuple(e, "KiKO", &fid, &kind, &key, &results))
            goto fail;
        if (kind < KIND_ANY || kind > KIND_DEFAULT || fid > 0xFFFFFFFFull) {
            PyErr_SetString(PyExc_ValueError, "bad answer-table entry");
            goto fail;
        }
        PyObject *rs = PySequence_Fast(results, "results must be a sequence");
        if (!rs)
            goto fail;
        if (PySequence_Fast_GET_SIZE(rs) != nresults) {
            Py_DECREF(rs);
            PyErr_Format(PyExc_ValueError, "entry %#llx needs %d results", fid, nresults);
            goto fail;
        }
        for (int j = 0; j < nresults; j++) {
            r[j] = PyLong_AsUnsignedLongLongMask(PySequence_Fast_GET_ITEM(rs, j));
            if (PyErr_Occurred()) {
                Py_DECREF(rs);
                goto fail;
            }
        }
        Py_DECREF(rs);
        if (table_insert(self, (uint32_t)fid, kind, kind == KIND_KEYED ? key : 0, r) < 0)
            goto fail;
        self->count++;
    }
    Py_DECREF(seq);
    if (direct && table_add_direct(self, direct) < 0)
        return -1;
    if (nq && table_add_queries(self, queries) < 0)
        return -1;
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

static int table_traverse(TableObject *self, visitproc visit, void *arg)
{
    if (self->slots)
        for (size_t i = 0; i <= self->mask; i++)
            Py_VISIT(self->slots[i].handler);
    Py_VISIT(self->on_error);
    return 0;
}

static int table_clear(TableObject *self)
{
    if (self->slots)
        for (size_t i = 0; i <= self->mask; i++)
            Py_CLEAR(self->slots[i].handler);
    Py_CLEAR(self->on_error);
    return 0;
}

static void table_dealloc(TableObject *self)
{
    PyObject_GC_UnTrack(self);
    table_free_slots(self);
    Py_CLEAR(self->on_error);
    if (self->has_states)
        PyBuffer_Release(&self->states);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *table_lookup_py(TableObject *self, PyObject *args)
{
    unsigned long long fid, key;
    if (!PyArg_ParseTuple(args, "KK", &fid, &key))
        return NULL;
    if (!self->slots || fid > 0xFFFFFFFFull)
        Py_RETURN_NONE;
    const Slot *s = table_lookup(self, (uint32_t)fid, key);
    if (!s || s->kind == KIND_DIRECT)
        Py_RETURN_NONE;
    PyObject *out = PyTuple_New(self->nresults);
    if (!out)
        return NULL;
    for (int j = 0; j < self->nresults; j++)
        PyTuple_SET_ITEM(out, j, PyLong_FromUnsignedLongLong(s->results[j]));
    return out;
}

static PyObject *table_get_enabled(TableObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->enabled);
}

static int table_set_enabled(TableObject *self, PyObject *value, void *closure)
{
    (void)closure;
    int v = value ? PyObject_IsTrue(value) : -1;
    if (v < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "enabled cannot be deleted");
        return -1;
    }
    self->enabled = v;
    return 0;
}

static PyObject *table_lookup_direct_py(TableObject *self, PyObject *arg)
{
    unsigned long long fid = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    const Slot *s = self->slots && fid <= 0xFFFFFFFFull
                        ? table_find(self, (uint32_t)fid, KIND_DIRECT, 0)
                        : NULL;
    return Py_NewRef(s ? s->handler : Py_None);
}

static PyObject *table_lookup_state_py(TableObject *self, PyObject *args)
{
    unsigned long long fid, x1, x2;
    if (!PyArg_ParseTuple(args, "KKK", &fid, &x1, &x2))
        return NULL;
    if (!self->slots || !self->has_states || fid > 0xFFFFFFFFull || x2 != 0)
        Py_RETURN_NONE;
    const Slot *v = table_find(self, (uint32_t)fid, KIND_VCPU, x1);
    const Slot *q = table_find(self, (uint32_t)fid, KIND_BY_STATE, 0);
    if (!v || !q || v->results[0] >= (uint64_t)self->states.len)
        Py_RETURN_NONE;
    uint8_t code = ((const uint8_t *)self->states.buf)[v->results[0]];
    if (code >= q->count)
        Py_RETURN_NONE;
    PyObject *out = PyTuple_New(self->nresults);
    if (!out)
        return NULL;
    for (int j = 0; j < self->nresults; j++)
        PyTuple_SET_ITEM(out, j, PyLong_FromUnsignedLongLong(j ? 0 : q->results[code]));
    return out;
}

static PyMethodDef table_methods[] = {
    {"lookup", (PyCFunction)table_lookup_py, METH_VARARGS,
     "lookup(fid, key) -> results tuple, or None when the call must go to the dispatcher"},
    {"lookup_direct", (PyCFunction)table_lookup_direct_py, METH_O,
     "lookup_direct(fid) -> the function's direct handler, or None"},
    {"lookup_state", (PyCFunction)table_lookup_state_py, METH_VARARGS,
     "lookup_state(fid, x1, x2) -> results from the vCPU state array, or None"},
    {NULL}};

static PyGetSetDef table_getset[] = {
    {"enabled", (getter)table_get_enabled, (setter)table_set_enabled,
     "False while tracing: every call then reaches the dispatcher", NULL},
    {NULL}};

static PyMemberDef table_members[] = {
    {"count", T_PYSSIZET, offsetof(TableObject, count), READONLY, "number of entries"},
    {"direct_count", T_PYSSIZET, offsetof(TableObject, direct_count), READONLY,
     "number of functions with a direct handler"},
    {"nresults", T_INT, offsetof(TableObject, nresults), READONLY, "results per entry"},
    {NULL}};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvkit.backends._trap.AnswerTable",
    .tp_basicsize = sizeof(TableObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "AnswerTable(entries, nresults, direct=(), on_error=None): (fid, kind, key, "
              "results) constant answers and (fid, handler) direct handlers",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)table_init,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_traverse = (traverseproc)table_traverse,
    .tp_clear = (inquiry)table_clear,
    .tp_methods = table_methods,
    .tp_getset = table_getset,
    .tp_members = table_members,
};

/* ------------------------------------------------------------------------------------
 * Arm64Trap: the UC_HOOK_INTR callback of one arm64 vCPU engine. */
typedef struct {
    PyObject_HEAD
    void *uc;
    uc_batch_fn read_batch;
    uc_batch_fn write_batch;
    uc_stop_fn emu_stop;
    uc_hook_add_fn hook_add;
    uc_hook_del_fn hook_del;
    /* registers read at every trap: the argument registers, then PC */
    int nregs;
    int regs[MAX_ARGS + 1];
    uint64_t vals[MAX_ARGS + 1];
    void *val_ptrs[MAX_ARGS + 1];
    int first_regs[FIRST_BATCH + 1]; /* the first argument registers, then PC */
    uint64_t first_vals[FIRST_BATCH + 1];
    void *first_ptrs[FIRST_BATCH + 1];
    int nresults;
    int result_regs[MAX_RESULTS];
    uint64_t results[MAX_RESULTS];
    void *result_ptrs[MAX_RESULTS];
    /* where the engine keeps each of those registers (UC_CTL_REG_POINTER), when it said:
     * then a register is one load or store, not a call and a decode of its ID */
    int pointers;
    uint64_t *reg_at[MAX_ARGS + 1];
    uint64_t *first_at[FIRST_BATCH + 1];
    uint64_t *result_at[MAX_RESULTS];
    uint32_t hvc_intno, smc_intno;
    /* exceptions the engine takes itself (bit n = exception n); on_other hears of one
     * only when `report` is set (tracing) or its vectors are missing or unfetchable */
    uint64_t delivered;
    int report;
    int vbar_reg;
    int vector_regs[2]; /* PC, VBAR_EL1 */
    uint64_t vector_vals[2];
    void *vector_ptrs[2];
    /* guest RAM as the host sees it, to read the trapping instruction word */
    uint64_t ram_base, ram_size;
    const uint8_t *ram_host;
    TableObject *table;
    PyObject *on_call;  /* on_call(args tuple, smc bool, immediate) -> results sequence */
    PyObject *on_other; /* on_other(intno) for every other exception */
    PyObject *error;    /* first exception the Python side raised, or NULL */
    size_t hook;
    int installed;
    int floor;          /* benchmark only: answer every HVC/SMC with x0 = 0, nothing else */
    PyObject *vcpu;     /* this vCPU's index, the first argument of a direct handler */
    unsigned long long table_hits;
    unsigned long long python_calls;
    unsigned long long direct_calls;
} TrapObject;

#define SMCCC_SMC64 (1u << 30)

static uint32_t instruction_word(const TrapObject *t, uint64_t address)
{
    /* Same rule as the Python engine: a word outside RAM reads as 0. */
    uint32_t w = 0;
    if (address >= t->ram_base && address - t->ram_base <= t->ram_size - 4)
        memcpy(&w, t->ram_host + (address - t->ram_base), 4);
    return w;
}

static inline void read_regs(TrapObject *t, void *uc, const int *regs, uint64_t *const *at,
                             void *const *vals, int n)
{
    if (t->pointers) {
        for (int i = 0; i < n; i++)
            *(uint64_t *)vals[i] = *at[i];
        return;
    }
    t->read_batch(uc, regs, vals, n);
}

static inline void write_result_regs(TrapObject *t, void *uc, void *const *vals, int n)
{
    if (t->pointers) {
        for (int i = 0; i < n; i++)
            *t->result_at[i] = *(const uint64_t *)vals[i];
        return;
    }
    t->write_batch(uc, t->result_regs, vals, n);
}

static void trap_fail(TrapObject *t, void *uc)
{
    if (!t->error) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        t->error = value ? value : Py_NewRef(Py_None);
        Py_XDECREF(type);
        Py_XDECREF(tb);
    } else {
        PyErr_Clear();
    }
    t->emu_stop(uc);
}

static void write_results(TrapObject *t, void *uc, PyObject *seq, int zero_fill)
{
    PyObject *fast = PySequence_Fast(seq, "the dispatcher must return a results sequence");
    if (!fast) {
        trap_fail(t, uc);
        return;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > t->nresults)
        n = t->nresults;
    for (Py_ssize_t i = 0; i < n; i++) {
        t->results[i] = PyLong_AsUnsignedLongLongMask(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred()) {
            Py_DECREF(fast);
            trap_fail(t, uc);
            return;
        }
    }
    Py_DECREF(fast);
    if (zero_fill) { /* registers a direct handler does not name are written as zero */
        for (Py_ssize_t i = n; i < t->nresults; i++)
            t->results[i] = 0;
        n = t->nresults;
    }
    write_result_regs(t, uc, t->result_ptrs, (int)n);
}

static void call_python(TrapObject *t, void *uc, int smc, uint32_t imm)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    t->python_calls++;
    int nargs = t->nregs - 1;
    PyObject *args = PyTuple_New(nargs);
    PyObject *immobj = PyLong_FromUnsignedLong(imm);
    if (!args || !immobj) {
        Py_XDECREF(args);
        Py_XDECREF(immobj);
        trap_fail(t, uc);
        PyGILState_Release(gil);
        return;
    }
    for (int i = 0; i < nargs; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(t->vals[i]);
        if (!v) {
            Py_DECREF(args);
            Py_DECREF(immobj);
            trap_fail(t, uc);
            PyGILState_Release(gil);
            return;
        }
        PyTuple_SET_ITEM(args, i, v);
    }
    PyObject *argv[3] = {args, smc ? Py_True : Py_False, immobj};
    PyObject *r = PyObject_Vectorcall(t->on_call, argv, 3, NULL);
    Py_DECREF(args);
    Py_DECREF(immobj);
    if (!r)
        trap_fail(t, uc);
    else {
        if (r != Py_None)
            write_results(t, uc, r, 0);
        Py_DECREF(r);
    }
    PyGILState_Release(gil);
}

/* A function with a direct handler: handler(vcpu, x1, x2, x3) with the arguments narrowed
 * as the SMCCC ABI narrows them (32-bit convention: w1..w3), results zero-filled. A
 * handler that raises is answered by the table's on_error, as the dispatcher answers. */
static void call_direct(TrapObject *t, void *uc, const TableObject *table, const Slot *d,
                        uint32_t fid, uint64_t x1)
{
    uint64_t x[3] = {x1, 0, 0};
    int nargs = t->nregs - 1;
    int more = nargs >= 4 ? 2 : nargs - 2;
    if (more > 0) {
        read_regs(t, uc, t->regs + 2, t->reg_at + 2, t->val_ptrs + 2, more);
        for (int i = 0; i < more; i++)
            x[1 + i] = t->vals[2 + i];
    }
    if (!(fid & SMCCC_SMC64))
        for (int i = 0; i < 3; i++)
            x[i] &= 0xFFFFFFFFull;
    PyGILState_STATE gil = PyGILState_Ensure();
    t->python_calls++;
    t->direct_calls++;
    PyObject *r = pvkit_call_direct(d->handler, t->vcpu, x, table->on_error, fid);
    if (!r)
        trap_fail(t, uc);
    else {
        write_results(t, uc, r, 1);
        Py_DECREF(r);
    }
    PyGILState_Release(gil);
}

static void call_other(TrapObject *t, void *uc, uint32_t intno)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *n = PyLong_FromUnsignedLong(intno);
    PyObject *r = n ? PyObject_CallOneArg(t->on_other, n) : NULL;
    Py_XDECREF(n);
    if (!r)
        trap_fail(t, uc);
    Py_XDECREF(r);
    PyGILState_Release(gil);
}

#define EXCP_SWI 2
#define VECTORS_SIZE 0x800

/* An exception the engine delivers needs Python only when tracing, or when the guest
 * has no vectors (VBAR_EL1 still 0, its reset value) or faults inside its vector table
 * (the same exception again at every entry: a loop that never ends). */
static int delivered_needs_python(TrapObject *t, void *uc, uint32_t intno)
{
    if (t->report)
        return 1;
    t->read_batch(uc, t->vector_regs, t->vector_ptrs, 2);
    uint64_t pc = t->vector_vals[0], vbar = t->vector_vals[1];
    if (vbar == 0)
        return 1;
    if (intno == EXCP_SWI)
        pc -= 4; /* reported past the SVC */
    return pc - vbar < VECTORS_SIZE;
}

/* A per-vCPU state query whose x1 named vCPU `v`: answered from the state array when x2
 * (narrowed as the convention says) is 0 and the vCPU's state code has an answer. */
static int answer_by_state(TrapObject *t, void *uc, const TableObject *table, const Slot *v,
                           uint32_t fid)
{
    if (t->nregs - 1 < 3)
        return 0;
    read_regs(t, uc, t->regs + 2, t->reg_at + 2, t->val_ptrs + 2, 1);
    uint64_t x2 = (fid & SMCCC_SMC64) ? t->vals[2] : (uint32_t)t->vals[2];
    const Slot *q = table_find(table, fid, KIND_BY_STATE, 0);
    uint64_t index = v->results[0];
    if (x2 != 0 || !q || index >= (uint64_t)table->states.len)
        return 0;
    const uint8_t *codes = table->states.buf;
    uint8_t code = __atomic_load_n(&codes[index], __ATOMIC_RELAXED); /* another vCPU writes it */
    if (code >= q->count)
        return 0;
    uint64_t r[MAX_RESULTS] = {q->results[code]};
    void *p[MAX_RESULTS];
    for (int i = 0; i < table->nresults; i++)
        p[i] = &r[i];
    write_result_regs(t, uc, p, table->nresults);
    t->table_hits++;
    return 1;
}

/* Registers are read in two batches: x0, x1 and PC first (all the answer table needs),
 * the remaining argument registers only when the call goes to Python. */
static void trap_intr(void *uc, uint32_t intno, void *user)
{
    TrapObject *t = user;
    if (intno != t->hvc_intno && intno != t->smc_intno) {
        if (intno < 64 && (t->delivered >> intno) & 1 && !delivered_needs_python(t, uc, intno))
            return;
        call_other(t, uc, intno);
        return;
    }
    if (t->floor) {
        static uint64_t zero = 0;
        void *p = &zero;
        write_result_regs(t, uc, &p, 1);
        return;
    }
    int nargs = t->nregs - 1;
    int first = nargs < FIRST_BATCH ? nargs : FIRST_BATCH;
    read_regs(t, uc, t->first_regs, t->first_at, t->first_ptrs, first + 1);
    uint64_t pc = t->first_vals[first]; /* already past the HVC/SMC */
    uint32_t imm = (instruction_word(t, pc - 4) >> 5) & 0xFFFF;
    const TableObject *table = t->table;
    if (imm == 0 && table && table->enabled) {
        uint32_t fid = (uint32_t)t->first_vals[0];
        uint64_t x1 = first > 1 ? t->first_vals[1] : 0;
        uint64_t key = (uint32_t)x1; /* the queried function ID: W1 (answer_table.py) */
        const Slot *s = table_lookup(table, fid, key);
        if (s) {
            void *p[MAX_RESULTS];
            for (int i = 0; i < table->nresults; i++)
                p[i] = (void *)&s->results[i];
            write_result_regs(t, uc, p, table->nresults);
            t->table_hits++;
            return;
        }
        if (table->has_states) {
            uint64_t target = (fid & SMCCC_SMC64) ? x1 : (uint32_t)x1;
            const Slot *v = table_find(table, fid, KIND_VCPU, target);
            if (v && answer_by_state(t, uc, table, v, fid))
                return;
        }
        const Slot *d = table->direct_count ? table_find(table, fid, KIND_DIRECT, 0) : NULL;
        if (d && t->vcpu) {
            call_direct(t, uc, table, d, fid, x1);
            return;
        }
    }
    for (int i = 0; i < first; i++)
        t->vals[i] = t->first_vals[i];
    if (nargs > first)
        read_regs(t, uc, t->regs + first, t->reg_at + first, t->val_ptrs + first,
                  nargs - first);
    call_python(t, uc, intno == t->smc_intno, imm);
}

static int read_int_list(PyObject *obj, int *out, int max, const char *what)
{
    PyObject *seq = PySequence_Fast(obj, what);
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > max) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s: 1..%d registers", what, max);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return (int)n;
}

/* `pointers`: None, or the engine's address of each argument register, PC and each result
 * register, in that order (all or none). */
static int read_pointers(TrapObject *self, PyObject *pointers, int nargs, int first)
{
    uint64_t *at[MAX_ARGS + 1 + MAX_RESULTS];
    int got = pvkit_register_pointers(pointers, at, self->nregs + self->nresults,
                                      "one per argument register, PC and result");
    self->pointers = got > 0;
    if (got <= 0)
        return got;
    for (int i = 0; i < self->nregs; i++)
        self->reg_at[i] = at[i];
    for (int i = 0; i <= FIRST_BATCH; i++)
        self->first_at[i] = i < first ? at[i] : at[nargs];
    for (int i = 0; i < self->nresults; i++)
        self->result_at[i] = at[self->nregs + i];
    return 0;
}

static int trap_init(TrapObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"uc", "functions", "argument_regs", "pc_reg", "result_regs",
                             "hvc_intno", "smc_intno", "ram_base", "ram_size", "ram_host",
                             "table", "on_call", "on_other", "delivered", "vbar_reg", "vcpu",
                             "pointers", NULL};
    unsigned long long uc, ram_base, ram_size, ram_host, delivered = 0;
    int vbar_reg = 0, vcpu = 0;
    PyObject *functions, *argregs, *resregs, *table, *on_call, *on_other, *pointers = Py_None;
    int pc_reg;
    unsigned int hvc, smc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KOOiOIIKKKOOO|KiiO", kwlist, &uc, &functions,
                                     &argregs, &pc_reg, &resregs, &hvc, &smc, &ram_base,
                                     &ram_size, &ram_host, &table, &on_call, &on_other,
                                     &delivered, &vbar_reg, &vcpu, &pointers))
        return -1;
    if (self->installed) {
        PyErr_SetString(PyExc_RuntimeError, "trap already installed");
        return -1;
    }
    if (table != Py_None && !PyObject_TypeCheck(table, &TableType)) {
        PyErr_SetString(PyExc_TypeError, "table must be an AnswerTable or None");
        return -1;
    }
    if (!PyCallable_Check(on_call) || !PyCallable_Check(on_other)) {
        PyErr_SetString(PyExc_TypeError, "on_call and on_other must be callable");
        return -1;
    }
    unsigned long long f[5];
    if (!PyArg_ParseTuple(functions, "KKKKK", &f[0], &f[1], &f[2], &f[3], &f[4]))
        return -1;
    int nargs = read_int_list(argregs, self->regs, MAX_ARGS, "argument_regs");
    if (nargs < 0)
        return -1;
    int nres = read_int_list(resregs, self->result_regs, MAX_RESULTS, "result_regs");
    if (nres < 0)
        return -1;
    if (ram_size < 4) {
        PyErr_SetString(PyExc_ValueError, "RAM too small");
        return -1;
    }
    self->uc = (void *)(uintptr_t)uc;
    self->read_batch = (uc_batch_fn)(uintptr_t)f[0];
    self->write_batch = (uc_batch_fn)(uintptr_t)f[1];
    self->emu_stop = (uc_stop_fn)(uintptr_t)f[2];
    self->hook_add = (uc_hook_add_fn)(uintptr_t)f[3];
    self->hook_del = (uc_hook_del_fn)(uintptr_t)f[4];
    self->regs[nargs] = pc_reg;
    self->nregs = nargs + 1;
    for (int i = 0; i < self->nregs; i++)
        self->val_ptrs[i] = &self->vals[i];
    int first = nargs < FIRST_BATCH ? nargs : FIRST_BATCH;
    for (int i = 0; i <= FIRST_BATCH; i++) {
        self->first_regs[i] = i < first ? self->regs[i] : pc_reg;
        self->first_ptrs[i] = &self->first_vals[i];
    }
    self->nresults = nres;
    for (int i = 0; i < nres; i++)
        self->result_ptrs[i] = &self->results[i];
    if (read_pointers(self, pointers, nargs, first) < 0)
        return -1;
    self->hvc_intno = hvc;
    self->smc_intno = smc;
    if (delivered && !vbar_reg) {
        PyErr_SetString(PyExc_ValueError, "delivered exceptions need vbar_reg");
        return -1;
    }
    self->delivered = delivered;
    self->vbar_reg = vbar_reg;
    self->vector_regs[0] = pc_reg;
    self->vector_regs[1] = vbar_reg;
    self->vector_ptrs[0] = &self->vector_vals[0];
    self->vector_ptrs[1] = &self->vector_vals[1];
    self->ram_base = ram_base;
    self->ram_size = ram_size;
    self->ram_host = (const uint8_t *)(uintptr_t)ram_host;
    Py_XSETREF(self->table, table == Py_None ? NULL : (TableObject *)Py_NewRef(table));
    Py_XSETREF(self->on_call, Py_NewRef(on_call));
    Py_XSETREF(self->on_other, Py_NewRef(on_other));
    Py_XSETREF(self->vcpu, PyLong_FromLong(vcpu));
    return self->vcpu ? 0 : -1;
}

static PyObject *trap_install(TrapObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->uc) {
        PyErr_SetString(PyExc_RuntimeError, "trap not initialised");
        return NULL;
    }
    if (self->installed)
        Py_RETURN_NONE;
    int err = self->hook_add(self->uc, &self->hook, UC_HOOK_INTR, (void *)trap_intr, self,
                             (uint64_t)1, (uint64_t)0);
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed with error %d", err);
        return NULL;
    }
    self->installed = 1;
    Py_INCREF(self); /* the engine holds a raw pointer to us until remove() */
    Py_RETURN_NONE;
}

static PyObject *trap_remove(TrapObject *self, PyObject *unused)
{
    (void)unused;
    if (self->installed) {
        self->hook_del(self->uc, self->hook);
        self->installed = 0;
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

static PyObject *trap_take_error(TrapObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *e = self->error;
    self->error = NULL;
    return e ? e : Py_NewRef(Py_None);
}

static int trap_traverse(TrapObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->table);
    Py_VISIT(self->on_call);
    Py_VISIT(self->on_other);
    Py_VISIT(self->error);
    return 0;
}

static int trap_clear(TrapObject *self)
{
    Py_CLEAR(self->table);
    Py_CLEAR(self->on_call);
    Py_CLEAR(self->on_other);
    Py_CLEAR(self->error);
    Py_CLEAR(self->vcpu);
    return 0;
}

static void trap_dealloc(TrapObject *self)
{
    PyObject_GC_UnTrack(self);
    trap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Only while the engine is stopped: the hook reads the table without the GIL. */
static PyObject *trap_set_table(TrapObject *self, PyObject *table)
{
    if (table != Py_None && !PyObject_TypeCheck(table, &TableType)) {
        PyErr_SetString(PyExc_TypeError, "table must be an AnswerTable or None");
        return NULL;
    }
    Py_XSETREF(self->table, table == Py_None ? NULL : (TableObject *)Py_NewRef(table));
    Py_RETURN_NONE;
}

static PyMethodDef trap_methods[] = {
    {"install", (PyCFunction)trap_install, METH_NOARGS, "add the UC_HOOK_INTR hook"},
    {"set_table", (PyCFunction)trap_set_table, METH_O,
     "answer from this table from now on (None: none); only while the engine is stopped"},
    {"remove", (PyCFunction)trap_remove, METH_NOARGS, "delete the hook (idempotent)"},
    {"take_error", (PyCFunction)trap_take_error, METH_NOARGS,
     "the exception the Python side raised inside the hook, once, or None"},
    {NULL}};

static PyMemberDef trap_members[] = {
    {"pointers", T_INT, offsetof(TrapObject, pointers), READONLY,
     "1 when registers are loaded and stored where the engine keeps them"},
    {"table_hits", T_ULONGLONG, offsetof(TrapObject, table_hits), READONLY,
     "calls answered from the answer table"},
    {"python_calls", T_ULONGLONG, offsetof(TrapObject, python_calls), READONLY,
     "calls that reached Python (the dispatcher, or a direct handler)"},
    {"direct_calls", T_ULONGLONG, offsetof(TrapObject, direct_calls), READONLY,
     "calls served by a direct handler (also counted in python_calls)"},
    {"report", T_INT, offsetof(TrapObject, report), 0,
     "hand every delivered exception to on_other too (tracing)"},
    {"floor", T_INT, offsetof(TrapObject, floor), 0,
     "benchmark only: answer every call with x0 = 0 and nothing else"},
    {NULL}};

static PyTypeObject TrapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvkit.backends._trap.Arm64Trap",
    .tp_basicsize = sizeof(TrapObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The UC_HOOK_INTR hypercall trap of one arm64 vCPU engine",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)trap_init,
    .tp_dealloc = (destructor)trap_dealloc,
    .tp_traverse = (traverseproc)trap_traverse,
    .tp_clear = (inquiry)trap_clear,
    .tp_methods = trap_methods,
    .tp_members = trap_members,
};

static struct PyModuleDef trap_module = {
    PyModuleDef_HEAD_INIT, "_trap", "C hot path for hypercall traps", -1, NULL,
};

PyMODINIT_FUNC PyInit__trap(void)
{
    if (PyType_Ready(&TableType) < 0 || PyType_Ready(&TrapType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&trap_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "AnswerTable", (PyObject *)&TableType) < 0 ||
        PyModule_AddObjectRef(m, "Arm64Trap", (PyObject *)&TrapType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
