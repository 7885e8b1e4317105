/* SysregHook: the MRS/MSR hooks of one arm64 vCPU engine, filtered in C.
 *
 * Why C: Unicorn calls an instruction hook for every MRS and MSR the guest executes, and
 * a kernel reads registers such as TPIDR_EL1 or CurrentEL all the time. Only the
 * registers the board emulates (generic timer, GIC CPU interface, counter) may cost a
 * trip into Python; every other access returns to the engine after a bitmap test.
 *
 * A register is keyed by its encoding (op0, op1, CRn, CRm, op2) packed into 16 bits:
 * op0[15:14] op1[13:11] CRn[10:7] CRm[6:3] op2[2:0]. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

typedef int (*uc_reg_write_fn)(void *uc, int regid, const void *value);
typedef int (*uc_stop_fn)(void *uc);
typedef int (*uc_hook_add_fn)(void *uc, size_t *hh, int type, void *callback, void *user_data,
                              uint64_t begin, uint64_t end, ...);
typedef int (*uc_hook_del_fn)(void *uc, size_t hh);

#define UC_HOOK_INSN (1 << 1)
#define UC_ARM64_INS_MRS 1
#define UC_ARM64_INS_MSR 2

typedef struct {
    uint32_t crn, crm, op0, op1, op2;
    uint64_t val;
} CpReg; /* uc_arm64_cp_reg */

typedef struct {
    PyObject_HEAD
    void *uc;
    uc_reg_write_fn reg_write;
    uc_stop_fn emu_stop;
    uc_hook_add_fn hook_add;
    uc_hook_del_fn hook_del;
    uint8_t keys[65536 / 8];
    PyObject *on_access; /* on_access(key, write, value) -> int (read) or None */
    PyObject *error;     /* first exception raised by on_access, or NULL */
    size_t hooks[2];
    int installed;
    unsigned long long python_calls;
} HookObject;

static inline unsigned pack_key(const CpReg *r)
{
    return (r->op0 & 3) << 14 | (r->op1 & 7) << 11 | (r->crn & 15) << 7 | (r->crm & 15) << 3 |
           (r->op2 & 7);
}

static void hook_fail(HookObject *h, void *uc)
{
    if (!h->error) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        h->error = value ? value : Py_NewRef(Py_None);
        Py_XDECREF(type);
        Py_XDECREF(tb);
    } else {
        PyErr_Clear();
    }
    h->emu_stop(uc);
}

/* Returns 1 when the access was served (the engine skips the instruction). */
static uint32_t serve_access(HookObject *h, void *uc, int reg, const CpReg *cp, int write)
{
    unsigned key = pack_key(cp);
    if (!(h->keys[key >> 3] & (1u << (key & 7))))
        return 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    h->python_calls++;
    uint32_t served = 1;
    PyObject *k = PyLong_FromUnsignedLong(key);
    PyObject *v = PyLong_FromUnsignedLongLong(cp->val);
    PyObject *r = NULL;
    if (k && v) {
        PyObject *argv[3] = {k, write ? Py_True : Py_False, v};
        r = PyObject_Vectorcall(h->on_access, argv, 3, NULL);
    }
    Py_XDECREF(k);
    Py_XDECREF(v);
    if (!r) {
        hook_fail(h, uc);
    } else {
        if (!write) {
            if (r == Py_None) {
                served = 0; /* the engine's own register after all */
            } else {
                uint64_t value = PyLong_AsUnsignedLongLongMask(r);
                if (PyErr_Occurred())
                    hook_fail(h, uc);
                else
                    h->reg_write(uc, reg, &value);
            }
        }
        Py_DECREF(r);
    }
    PyGILState_Release(gil);
    return served;
}

static uint32_t on_mrs(void *uc, int reg, const CpReg *cp, void *user)
{
    return serve_access((HookObject *)user, uc, reg, cp, 0);
}

static uint32_t on_msr(void *uc, int reg, const CpReg *cp, void *user)
{
    return serve_access((HookObject *)user, uc, reg, cp, 1);
}

static int hook_init(HookObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"uc", "functions", "keys", "on_access", NULL};
    unsigned long long uc;
    PyObject *functions, *keys, *on_access;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KOOO", kwlist, &uc, &functions, &keys,
                                     &on_access))
        return -1;
    if (self->installed) {
        PyErr_SetString(PyExc_RuntimeError, "hook already installed");
        return -1;
    }
    if (!PyCallable_Check(on_access)) {
        PyErr_SetString(PyExc_TypeError, "on_access must be callable");
        return -1;
    }
    unsigned long long f[4];
    if (!PyArg_ParseTuple(functions, "KKKK", &f[0], &f[1], &f[2], &f[3]))
        return -1;
    PyObject *seq = PySequence_Fast(keys, "keys must be a sequence of packed encodings");
    if (!seq)
        return -1;
    memset(self->keys, 0, sizeof self->keys);
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        long key = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (key == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        if (key < 0 || key > 0xFFFF) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "a packed register encoding has 16 bits");
            return -1;
        }
        self->keys[key >> 3] |= (uint8_t)(1u << (key & 7));
    }
    Py_DECREF(seq);
    self->uc = (void *)(uintptr_t)uc;
    self->reg_write = (uc_reg_write_fn)(uintptr_t)f[0];
    self->emu_stop = (uc_stop_fn)(uintptr_t)f[1];
    self->hook_add = (uc_hook_add_fn)(uintptr_t)f[2];
    self->hook_del = (uc_hook_del_fn)(uintptr_t)f[3];
    Py_XSETREF(self->on_access, Py_NewRef(on_access));
    return 0;
}

static PyObject *hook_install(HookObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->uc) {
        PyErr_SetString(PyExc_RuntimeError, "hook not initialised");
        return NULL;
    }
    if (self->installed)
        Py_RETURN_NONE;
    int err = self->hook_add(self->uc, &self->hooks[0], UC_HOOK_INSN, (void *)on_mrs, self,
                             (uint64_t)1, (uint64_t)0, UC_ARM64_INS_MRS);
    if (!err)
        err = self->hook_add(self->uc, &self->hooks[1], UC_HOOK_INSN, (void *)on_msr, self,
                             (uint64_t)1, (uint64_t)0, UC_ARM64_INS_MSR);
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed with error %d", err);
        return NULL;
    }
    self->installed = 1;
    Py_INCREF(self); /* the engine holds a raw pointer to us until remove() */
    Py_RETURN_NONE;
}

static PyObject *hook_remove(HookObject *self, PyObject *unused)
{
    (void)unused;
    if (self->installed) {
        self->hook_del(self->uc, self->hooks[0]);
        self->hook_del(self->uc, self->hooks[1]);
        self->installed = 0;
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

static PyObject *hook_take_error(HookObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *e = self->error;
    self->error = NULL;
    return e ? e : Py_NewRef(Py_None);
}

static int hook_traverse(HookObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->on_access);
    Py_VISIT(self->error);
    return 0;
}

static int hook_clear(HookObject *self)
{
    Py_CLEAR(self->on_access);
    Py_CLEAR(self->error);
    return 0;
}

static void hook_dealloc(HookObject *self)
{
    PyObject_GC_UnTrack(self);
    hook_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef hook_methods[] = {
    {"install", (PyCFunction)hook_install, METH_NOARGS, "add the MRS and MSR hooks"},
    {"remove", (PyCFunction)hook_remove, METH_NOARGS, "delete the hooks (idempotent)"},
    {"take_error", (PyCFunction)hook_take_error, METH_NOARGS,
     "the exception on_access raised inside the hook, once, or None"},
    {NULL}};

static PyMemberDef hook_members[] = {
    {"python_calls", T_ULONGLONG, offsetof(HookObject, python_calls), READONLY,
     "accesses that reached on_access"},
    {NULL}};

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvkit.backends.arm64._sysreg.SysregHook",
    .tp_basicsize = sizeof(HookObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "SysregHook(uc, functions, keys, on_access): MRS/MSR of chosen registers",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)hook_init,
    .tp_dealloc = (destructor)hook_dealloc,
    .tp_traverse = (traverseproc)hook_traverse,
    .tp_clear = (inquiry)hook_clear,
    .tp_methods = hook_methods,
    .tp_members = hook_members,
};

static struct PyModuleDef sysreg_module = {
    PyModuleDef_HEAD_INIT, "_sysreg", "MRS/MSR hooks filtered in C", -1, NULL,
};

PyMODINIT_FUNC PyInit__sysreg(void)
{
    if (PyType_Ready(&HookType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&sysreg_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "SysregHook", (PyObject *)&HookType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
