/* InsnBudget: count the guest instructions a vCPU engine executes, and stop it when a
 * budget is spent (the deterministic clock, where time is instructions). Optionally also
 * stop it before x86 RDMSR/WRMSR, which Unicorn 2.1 cannot hook, so that the host can
 * serve its paravirtual MSRs.
 *
 * A UC_HOOK_CODE callback runs before each instruction; stopping there leaves that
 * instruction unexecuted and uncounted, so `executed` is exact when emu_start returns.
 * This is the cost unicorn's own count= option has, but the count stays readable.
 *
 * A debugger (pvkit.debug) uses the same hook, so that its stops leave the count exact
 * and add no hook of their own: `hold` stops before the next instruction (a stop asked
 * from another thread, or after a watched access), `step` lets one instruction run and
 * then holds, and breakpoint addresses hold before the instruction there. With none of
 * them set the hook costs three tests more than before. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h>

typedef int (*uc_stop_fn)(void *uc);
typedef int (*uc_hook_add_fn)(void *uc, size_t *hh, int type, void *callback, void *user_data,
                              uint64_t begin, uint64_t end, ...);
typedef int (*uc_hook_del_fn)(void *uc, size_t hh);

#define UC_HOOK_CODE 4

typedef struct {
    PyObject_HEAD
    void *uc;
    uc_stop_fn emu_stop;
    uc_hook_add_fn hook_add;
    uc_hook_del_fn hook_del;
    size_t hook;
    int installed;
    unsigned long long executed; /* instructions executed since the last reset */
    unsigned long long budget;   /* stop before executed would pass this */
    int watch_msr;               /* stop before RDMSR (0f 32) and WRMSR (0f 30) */
    unsigned long long msr_at;   /* where it stopped for one, or NONE */
    unsigned long long skip_at;  /* let the MSR instruction here run once, or NONE */
    unsigned long long ram_base, ram_size;
    const uint8_t *ram_host;     /* guest RAM; code addresses are read as physical */
    volatile int hold;           /* debugger: stop before the next instruction */
    volatile int step;           /* debugger: 1 = run one instruction, then hold; 2 = ran */
    unsigned long long bp_hit;   /* debugger: the breakpoint that held it, or NONE */
    unsigned long long *bps;     /* debugger: breakpoint addresses */
    Py_ssize_t n_bps;
} BudgetObject;

#define NONE (~0ULL)

static void budget_code(void *uc, uint64_t address, uint32_t size, void *user)
{
    (void)address;
    (void)size;
    BudgetObject *b = (BudgetObject *)user;
    if (b->hold || b->step || b->n_bps) {
        if (b->hold || b->step == 2) {
            b->hold = 1;
            b->emu_stop(uc);
            return;
        }
        if (b->step != 1) { /* the instruction a step starts at runs even with a breakpoint */
            for (Py_ssize_t i = 0; i < b->n_bps; i++) {
                if (b->bps[i] == address) {
                    b->bp_hit = address;
                    b->hold = 1;
                    b->emu_stop(uc);
                    return;
                }
            }
        }
    }
    if (b->watch_msr && size == 2 && address - b->ram_base < b->ram_size - 1) {
        if (address == b->skip_at) {
            b->skip_at = NONE;
        } else {
            const uint8_t *p = b->ram_host + (address - b->ram_base);
            if (p[0] == 0x0F && (p[1] == 0x30 || p[1] == 0x32)) {
                b->msr_at = address;
                b->emu_stop(uc);
                return;
            }
        }
    }
    if (b->executed >= b->budget) {
        b->emu_stop(uc);
        return;
    }
    if (b->step == 1)
        b->step = 2;
    b->executed++;
}

static int budget_init(BudgetObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"uc", "emu_stop", "hook_add", "hook_del", "watch_msr",
                             "ram_base", "ram_size", "ram_host", NULL};
    unsigned long long uc, stop, add, del, base = 0, size = 0, host = 0;
    int watch = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKKK|pKKK", kwlist, &uc, &stop, &add, &del,
                                     &watch, &base, &size, &host))
        return -1;
    if (watch && (size < 2 || !host)) {
        PyErr_SetString(PyExc_ValueError, "watching MSR instructions needs the guest RAM");
        return -1;
    }
    if (self->installed) {
        PyErr_SetString(PyExc_RuntimeError, "budget hook already installed");
        return -1;
    }
    self->uc = (void *)(uintptr_t)uc;
    self->emu_stop = (uc_stop_fn)(uintptr_t)stop;
    self->hook_add = (uc_hook_add_fn)(uintptr_t)add;
    self->hook_del = (uc_hook_del_fn)(uintptr_t)del;
    self->executed = 0;
    self->budget = NONE;
    self->watch_msr = watch;
    self->msr_at = NONE;
    self->skip_at = NONE;
    self->ram_base = base;
    self->ram_size = size;
    self->ram_host = (const uint8_t *)(uintptr_t)host;
    self->hold = 0;
    self->step = 0;
    self->bp_hit = NONE;
    return 0;
}

static PyObject *budget_set_breakpoints(BudgetObject *self, PyObject *addresses)
{
    PyObject *seq = PySequence_Fast(addresses, "breakpoints must be a sequence of addresses");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    unsigned long long *bps = n ? PyMem_Calloc((size_t)n, sizeof(*bps)) : NULL;
    if (n && !bps) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        bps[i] = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            PyMem_Free(bps);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    /* Only called while the engine is stopped (the vCPU is parked): no hook reads these. */
    unsigned long long *old = self->bps;
    self->n_bps = 0;
    self->bps = bps;
    self->n_bps = n;
    PyMem_Free(old);
    Py_RETURN_NONE;
}

static void budget_dealloc(BudgetObject *self)
{
    PyMem_Free(self->bps);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *budget_install(BudgetObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->uc) {
        PyErr_SetString(PyExc_RuntimeError, "budget hook not initialised");
        return NULL;
    }
    if (self->installed)
        Py_RETURN_NONE;
    int err = self->hook_add(self->uc, &self->hook, UC_HOOK_CODE, (void *)budget_code, self,
                             (uint64_t)1, (uint64_t)0);
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed with error %d", err);
        return NULL;
    }
    self->installed = 1;
    Py_INCREF(self); /* the engine holds a raw pointer to us until remove() */
    Py_RETURN_NONE;
}

static PyObject *budget_remove(BudgetObject *self, PyObject *unused)
{
    (void)unused;
    if (self->installed) {
        self->hook_del(self->uc, self->hook);
        self->installed = 0;
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

static PyMethodDef budget_methods[] = {
    {"install", (PyCFunction)budget_install, METH_NOARGS, "add the UC_HOOK_CODE hook"},
    {"remove", (PyCFunction)budget_remove, METH_NOARGS, "delete the hook (before uc_close)"},
    {"set_breakpoints", (PyCFunction)budget_set_breakpoints, METH_O,
     "hold before the instructions at these addresses (a debugger's breakpoints)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef budget_members[] = {
    {"executed", T_ULONGLONG, offsetof(BudgetObject, executed), 0, "instructions executed"},
    {"budget", T_ULONGLONG, offsetof(BudgetObject, budget), 0, "stop when executed reaches it"},
    {"msr_at", T_ULONGLONG, offsetof(BudgetObject, msr_at), 0, "stopped before RDMSR/WRMSR here"},
    {"skip_at", T_ULONGLONG, offsetof(BudgetObject, skip_at), 0, "run the MSR access here once"},
    {"hold", T_INT, offsetof(BudgetObject, hold), 0, "debugger: stop before the next instruction"},
    {"step", T_INT, offsetof(BudgetObject, step), 0, "debugger: 1 = one instruction, then hold"},
    {"bp_hit", T_ULONGLONG, offsetof(BudgetObject, bp_hit), 0, "debugger: breakpoint that held"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BudgetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvkit.backends._budget.InsnBudget",
    .tp_basicsize = sizeof(BudgetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Counts a vCPU engine's instructions and stops it at a budget",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)budget_dealloc,
    .tp_init = (initproc)budget_init,
    .tp_methods = budget_methods,
    .tp_members = budget_members,
};

static struct PyModuleDef budget_module = {
    PyModuleDef_HEAD_INIT, "_budget", "instruction budgets for the deterministic clock", -1, NULL,
};

PyMODINIT_FUNC PyInit__budget(void)
{
    if (PyType_Ready(&BudgetType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&budget_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "InsnBudget", (PyObject *)&BudgetType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
