/* The x86-64 vCPU's hot paths in C: VMCALL/VMMCALL, and RDMSR/WRMSR of pvkit's MSRs.
 *
 * Hypercalls: VMCALL and VMMCALL reach the host only as invalid instructions (RIP at the
 * instruction). This hook reads the registers in batches, walks the guest's page tables
 * over the shared RAM buffer (the same walk as backends/x86/paging.py: paging off, or
 * 4-level long-mode paging) to fetch the instruction bytes and the CS descriptor, answers
 * per-VM constants from its answer table, and otherwise calls Python once with integers
 * and writes RAX and RIP back in one batch. Anything unusual (not a native hypercall
 * instruction, an unmapped descriptor) goes to Python's slow path, which does what the
 * engine always did.
 *
 * MSRs: Unicorn 2.1 cannot hook RDMSR/WRMSR, and a code hook over all code costs ~20x in
 * guest speed. Instead every newly translated block is scanned for the bytes 0f 30
 * (WRMSR) and 0f 32 (RDMSR); each such address gets a code hook of its own, which costs
 * nothing until that instruction runs. Translation reports new blocks through
 * UC_HOOK_EDGE_GENERATED, for every block but the engine's very first one, which a block
 * hook catches once and then deletes. A block found to hold a new site is dropped from the
 * translation cache and looked up again (a RIP write makes the engine leave the block
 * loop without leaving emu_start), so that it is translated with the hook in place. Code
 * the guest rewrites is translated again, and scanned again. A byte pair inside another
 * instruction never starts an instruction, so its hook never runs; the hook also checks
 * the bytes again before serving, as code may have changed.
 *
 * Nothing here links against libunicorn: Python hands over the function addresses of the
 * library the binding loaded. backends/x86/trap.py has the same behaviour over ctypes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "../_direct.h"
#include "../_pointers.h"

typedef int (*uc_batch_fn)(void *uc, const int *regs, void *const *vals, int count);
typedef int (*uc_stop_fn)(void *uc);
typedef int (*uc_hook_add_fn)(void *uc, size_t *hh, int type, void *callback, void *user_data,
                              uint64_t begin, uint64_t end, ...);
typedef int (*uc_hook_del_fn)(void *uc, size_t hh);
typedef int (*uc_ctl_fn)(void *uc, int control, ...);
typedef int (*uc_write_fn)(void *uc, int regid, const void *value);

#define UC_HOOK_CODE 4
#define UC_HOOK_BLOCK 8
#define UC_HOOK_INSN_INVALID (1 << 14)
#define UC_HOOK_EDGE_GENERATED (1 << 15)

#define CR0_PG (1ull << 31)
#define EFER_LMA (1ull << 10)
#define DESCRIPTOR_LONG (1ull << 53)
#define PTE_PRESENT 1ull
#define PTE_LARGE (1ull << 7)
#define PTE_ADDRESS 0x000FFFFFFFFFF000ull
#define PAGE 4096ull

typedef struct {
    uint64_t pc;
    uint16_t icount;
    uint16_t size;
} uc_tb;

typedef struct {
    uint32_t rid;
    uint64_t value;
} uc_x86_msr;

typedef struct {
    uint16_t selector;
    uint64_t base;
    uint32_t limit;
    uint32_t flags;
} uc_x86_mmr;

/* Register order of the `regs` argument. */
enum { R_RAX, R_RBX, R_RCX, R_RDX, R_RSI, R_RIP, R_CS, R_CR0, R_CR3, R_MSR, R_GDTR, NREGS };

typedef struct {
    PyObject_HEAD
    void *uc;
    uc_batch_fn read_batch, write_batch;
    uc_stop_fn emu_stop;
    uc_hook_add_fn hook_add;
    uc_hook_del_fn hook_del;
    uc_ctl_fn ctl;
    uc_write_fn reg_write; /* RIP alone: unlike the batch, it keeps the engine from
                              restoring RIP when it leaves the block */
    int remove_cache; /* the uc_ctl code of UC_CTL_TB_REMOVE_CACHE with two arguments */
    int regs[NREGS];
    /* where the engine keeps RAX..RSI and RIP (UC_CTL_REG_POINTER), when it said: a
     * hypercall's registers are then loads and stores, and RIP's store does not make the
     * engine leave and re-enter its loop as uc_reg_write does */
    int pointers;
    uint64_t *at[R_RIP + 1];
    uint64_t ram_base, ram_size;
    const uint8_t *ram_host;
    int hypercalls;     /* a hypercall port exists */
    Py_buffer native;   /* the native instruction: the patcher's live buffer (3 bytes) */
    int has_native;     /* 0: no patcher, either instruction is served */
    int watch_msr;
    PyObject *on_call;    /* on_call(gprs, vmmcall, cpl, long_mode) -> RAX or None */
    PyObject *on_invalid; /* on_invalid() for everything else the hook sees */
    PyObject *on_msr;     /* on_msr(write, index, value) -> None | False | value */
    PyObject *error;
    /* constant answers by hypercall nr (CPL 0, 64-bit callers only) */
    uint64_t *answer_nr, *answer_rax;
    Py_ssize_t n_answers;
    int answers_enabled; /* also the direct route's switch: off while tracing */
    /* direct handlers by hypercall nr (CPL 0, 64-bit callers only), as on arm64:
       handler(vcpu, rbx, rcx, rdx) -> results, RAX the first; a handler that raises is
       answered by on_error(vcpu, nr, exc), as the dispatcher answers a failed handler */
    uint64_t *direct_nr;
    PyObject **direct_fn;
    Py_ssize_t n_direct;
    PyObject *on_error, *vcpu;
    size_t invalid_hook, edge_hook, block_hook;
    int installed, block_live;
    size_t *site_hooks;
    Py_ssize_t n_sites, cap_sites;
    uint64_t *site_set; /* open addressing; 0 = empty (address 0 is kept aside) */
    size_t set_mask;
    int site_zero;
    int restart; /* the first-block hook stopped the engine: run again */
    unsigned long long python_calls, table_hits, msr_calls, scans, direct_calls;
} X86TrapObject;

/* -- guest memory ------------------------------------------------------------------- */
static inline int ram_contains(const X86TrapObject *t, uint64_t a, uint64_t n)
{
    return a >= t->ram_base && n <= t->ram_size && a - t->ram_base <= t->ram_size - n;
}

static inline uint64_t ram_u64(const X86TrapObject *t, uint64_t a)
{
    uint64_t v;
    memcpy(&v, t->ram_host + (a - t->ram_base), 8);
    return v;
}

/* paging.translate: 0 and *pa, or -1 where the guest has no mapping. */
static int translate(const X86TrapObject *t, uint64_t cr0, uint64_t cr3, uint64_t va,
                     uint64_t *pa)
{
    static const int shifts[4] = {39, 30, 21, 12};
    if (!(cr0 & CR0_PG)) {
        *pa = va & 0xFFFFFFFFull;
        return 0;
    }
    uint64_t table = cr3 & PTE_ADDRESS;
    for (int level = 0; level < 4; level++) {
        int shift = shifts[level];
        uint64_t slot = table + ((va >> shift) & 0x1FF) * 8;
        if (!ram_contains(t, slot, 8))
            return -1;
        uint64_t entry = ram_u64(t, slot);
        if (!(entry & PTE_PRESENT))
            return -1;
        if ((level == 1 || level == 2) && (entry & PTE_LARGE)) {
            uint64_t size = 1ull << shift;
            *pa = (entry & PTE_ADDRESS & ~(size - 1)) | (va & (size - 1));
            return 0;
        }
        table = entry & PTE_ADDRESS;
    }
    *pa = table | (va & 0xFFF);
    return 0;
}

/* The engine's _fetch: up to n bytes at va, ending early at the first byte that is
 * unmapped or outside RAM. Returns how many were read. */
static int fetch(const X86TrapObject *t, uint64_t cr0, uint64_t cr3, uint64_t va, uint8_t *out,
                 int n)
{
    for (int i = 0; i < n; i++) {
        uint64_t pa;
        if (translate(t, cr0, cr3, va + (uint64_t)i, &pa) || !ram_contains(t, pa, 1))
            return i;
        out[i] = t->ram_host[pa - t->ram_base];
    }
    return n;
}

/* -- Python calls --------------------------------------------------------------------- */
static void trap_fail(X86TrapObject *t, void *uc)
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

/* Calls fn(*args) with the GIL; *out gets the int result, or the call returns 0 for None
 * and -1 for a failure (recorded, engine stopped). */
static int call_int(X86TrapObject *t, void *uc, PyObject *fn, PyObject *args, int64_t *out)
{
    if (!args) {
        trap_fail(t, uc);
        return -1;
    }
    PyObject *r = PyObject_Call(fn, args, NULL);
    Py_DECREF(args);
    if (!r) {
        trap_fail(t, uc);
        return -1;
    }
    if (r == Py_None) {
        Py_DECREF(r);
        return 0;
    }
    *out = (int64_t)PyLong_AsUnsignedLongLongMask(r);
    Py_DECREF(r);
    if (PyErr_Occurred()) {
        trap_fail(t, uc);
        return -1;
    }
    return 1;
}

static void slow_invalid(X86TrapObject *t, void *uc)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *r = PyObject_CallNoArgs(t->on_invalid);
    if (!r)
        trap_fail(t, uc);
    Py_XDECREF(r);
    PyGILState_Release(gil);
}

/* -- hypercalls ----------------------------------------------------------------------- */
static const uint8_t VMCALL[3] = {0x0F, 0x01, 0xC1};
static const uint8_t VMMCALL[3] = {0x0F, 0x01, 0xD9};

/* Where nr is in the sorted `keys`, or -1. */
static Py_ssize_t find_nr(const uint64_t *keys, Py_ssize_t n, uint64_t nr)
{
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (keys[mid] < nr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && keys[lo] == nr ? lo : -1;
}

static int answer_for(const X86TrapObject *t, uint64_t nr, uint64_t *rax)
{
    Py_ssize_t i = find_nr(t->answer_nr, t->n_answers, nr);
    if (i >= 0)
        *rax = t->answer_rax[i];
    return i >= 0;
}

static PyObject *direct_for(const X86TrapObject *t, uint64_t nr)
{
    Py_ssize_t i = find_nr(t->direct_nr, t->n_direct, nr);
    return i >= 0 ? t->direct_fn[i] : NULL;
}

/* RAX from a direct handler's results (0 if it named none); -1 after a failure that
 * stopped the engine. Called with the GIL. */
static int call_direct(X86TrapObject *t, void *uc, PyObject *fn, const uint64_t *v,
                       uint64_t *rax)
{
    t->python_calls++;
    t->direct_calls++;
    const uint64_t args[3] = {v[R_RBX], v[R_RCX], v[R_RDX]};
    PyObject *r = pvkit_call_direct(fn, t->vcpu, args, t->on_error, v[R_RAX]);
    if (!r) {
        trap_fail(t, uc);
        return -1;
    }
    *rax = PySequence_Fast_GET_SIZE(r) ? PyLong_AsUnsignedLongLongMask(
                                             PySequence_Fast_GET_ITEM(r, 0))
                                       : 0;
    Py_DECREF(r);
    if (PyErr_Occurred()) {
        trap_fail(t, uc);
        return -1;
    }
    return 0;
}

static int long_mode(const X86TrapObject *t, uint64_t cs, uint64_t cr0, uint64_t cr3,
                     uint64_t efer, const uc_x86_mmr *gdtr, int *lm)
{
    *lm = 0;
    if (!(efer & EFER_LMA))
        return 0;
    uint64_t slot = cs & ~7ull;
    if ((cs & 4) || slot + 7 > gdtr->limit)
        return 0;
    uint64_t pa;
    if (translate(t, cr0, cr3, gdtr->base + slot, &pa) || !ram_contains(t, pa, 8))
        return -1; /* Python raises here: its slow path reports the fault */
    *lm = (ram_u64(t, pa) & DESCRIPTOR_LONG) != 0;
    return 0;
}

static int x86_invalid(void *uc, void *user)
{
    X86TrapObject *t = user;
    uint64_t v[NREGS];
    uc_x86_msr efer = {0xC0000080u, 0};
    uc_x86_mmr gdtr = {0, 0, 0, 0};
    void *p[NREGS];
    for (int i = 0; i < NREGS; i++)
        p[i] = &v[i];
    p[R_MSR] = &efer;
    p[R_GDTR] = &gdtr;
    if (t->pointers) {
        v[R_RIP] = *t->at[R_RIP];
        t->read_batch(uc, t->regs + R_CS, p + R_CS, 3); /* CS, CR0, CR3 */
    } else {
        t->read_batch(uc, t->regs + R_RIP, p + R_RIP, 4); /* RIP, CS, CR0, CR3 */
    }
    uint8_t code[3];
    int n = fetch(t, v[R_CR0], v[R_CR3], v[R_RIP], code, 3);
    int vmcall = n == 3 && !memcmp(code, VMCALL, 3);
    int vmmcall = n == 3 && !memcmp(code, VMMCALL, 3);
    if (!t->hypercalls || !(vmcall || vmmcall) ||
        (t->has_native && memcmp(code, t->native.buf, 3))) {
        slow_invalid(t, uc);
        return 1;
    }
    if (t->pointers) {
        for (int i = R_RAX; i < R_RIP; i++)
            v[i] = *t->at[i];
    } else {
        t->read_batch(uc, t->regs, p, 5); /* RAX, RBX, RCX, RDX, RSI */
    }
    t->read_batch(uc, t->regs + R_MSR, p + R_MSR, 2); /* EFER, GDTR */
    int lm;
    if (long_mode(t, v[R_CS], v[R_CR0], v[R_CR3], efer.value, &gdtr, &lm) < 0) {
        slow_invalid(t, uc);
        return 1;
    }
    int cpl = (int)(v[R_CS] & 3);
    uint64_t rax, rip = v[R_RIP] + 3;
    PyObject *direct = NULL;
    if (cpl == 0 && lm && t->answers_enabled && answer_for(t, v[R_RAX], &rax)) {
        t->table_hits++;
    } else if (cpl == 0 && lm && t->answers_enabled && (direct = direct_for(t, v[R_RAX]))) {
        PyGILState_STATE gil = PyGILState_Ensure();
        int failed = call_direct(t, uc, direct, v, &rax);
        PyGILState_Release(gil);
        if (failed)
            return 1;
    } else {
        PyGILState_STATE gil = PyGILState_Ensure();
        t->python_calls++;
        PyObject *args = Py_BuildValue("((KKKKK)OiO)", (unsigned long long)v[R_RAX],
                                       (unsigned long long)v[R_RBX], (unsigned long long)v[R_RCX],
                                       (unsigned long long)v[R_RDX], (unsigned long long)v[R_RSI],
                                       vmmcall ? Py_True : Py_False, cpl, lm ? Py_True : Py_False);
        int64_t out = 0;
        int got = call_int(t, uc, t->on_call, args, &out);
        PyGILState_Release(gil);
        if (got <= 0)
            return 1; /* a fault was reported: the registers stay as they were */
        rax = (uint64_t)out;
    }
    if (t->pointers) { /* no block runs in this hook: the engine fetches at RIP next */
        *t->at[R_RAX] = rax;
        *t->at[R_RIP] = rip;
        return 1;
    }
    t->reg_write(uc, t->regs[R_RAX], &rax);
    t->reg_write(uc, t->regs[R_RIP], &rip);
    return 1;
}

/* -- MSR sites ------------------------------------------------------------------------ */
static int set_has(const X86TrapObject *t, uint64_t a)
{
    if (a == 0)
        return t->site_zero;
    if (!t->site_set)
        return 0;
    for (size_t i = (size_t)(a * 0x9E3779B97F4A7C15ull >> 20) & t->set_mask;;
         i = (i + 1) & t->set_mask) {
        if (t->site_set[i] == a)
            return 1;
        if (t->site_set[i] == 0)
            return 0;
    }
}

static int set_put(X86TrapObject *t, uint64_t a)
{
    if (a == 0) {
        t->site_zero = 1;
        return 0;
    }
    if (!t->site_set || (size_t)t->n_sites * 2 >= t->set_mask) {
        size_t cap = t->site_set ? (t->set_mask + 1) * 2 : 64;
        uint64_t *old = t->site_set;
        size_t old_cap = old ? t->set_mask + 1 : 0;
        uint64_t *fresh = calloc(cap, sizeof(uint64_t));
        if (!fresh)
            return -1;
        t->site_set = fresh;
        t->set_mask = cap - 1;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i])
                for (size_t j = (size_t)(old[i] * 0x9E3779B97F4A7C15ull >> 20) & t->set_mask;;
                     j = (j + 1) & t->set_mask)
                    if (!fresh[j]) {
                        fresh[j] = old[i];
                        break;
                    }
        free(old);
    }
    for (size_t i = (size_t)(a * 0x9E3779B97F4A7C15ull >> 20) & t->set_mask;;
         i = (i + 1) & t->set_mask)
        if (!t->site_set[i]) {
            t->site_set[i] = a;
            return 0;
        }
}

static void msr_site(void *uc, uint64_t address, uint32_t size, void *user);

static int add_site(X86TrapObject *t, uint64_t address)
{
    if (t->n_sites == t->cap_sites) {
        Py_ssize_t cap = t->cap_sites ? t->cap_sites * 2 : 16;
        size_t *grown = realloc(t->site_hooks, (size_t)cap * sizeof(size_t));
        if (!grown)
            return -1;
        t->site_hooks = grown;
        t->cap_sites = cap;
    }
    if (set_put(t, address) < 0)
        return -1;
    if (t->hook_add(t->uc, &t->site_hooks[t->n_sites], UC_HOOK_CODE, (void *)msr_site, t,
                    address, address))
        return -1;
    t->n_sites++;
    return 0;
}

/* Scan [pc, pc + size) for 0f 30 / 0f 32; hook the new sites. Returns 1 if any. */
static int scan(X86TrapObject *t, void *uc, uint64_t pc, uint32_t size)
{
    uint64_t cr[2];
    void *p[2] = {&cr[0], &cr[1]};
    t->read_batch(uc, t->regs + R_CR0, p, 2);
    t->scans++;
    int found = 0, prev = -1;
    uint64_t va = pc, end = pc + size;
    while (va < end) {
        uint64_t chunk = PAGE - (va & (PAGE - 1));
        if (chunk > end - va)
            chunk = end - va;
        uint64_t pa;
        if (translate(t, cr[0], cr[1], va, &pa) || !ram_contains(t, pa, chunk)) {
            prev = -1;
            va += chunk;
            continue;
        }
        const uint8_t *b = t->ram_host + (pa - t->ram_base);
        for (uint64_t i = 0; i < chunk; i++) {
            if (prev == 0x0F && (b[i] == 0x30 || b[i] == 0x32)) {
                uint64_t site = va + i - 1;
                if (!set_has(t, site)) {
                    if (add_site(t, site) < 0)
                        return found; /* out of memory: that site stays unserved */
                    found = 1;
                }
            }
            prev = b[i];
        }
        va += chunk;
    }
    return found;
}

/* The block was translated without its new hooks: drop it, and make the engine look the
 * block up again (a RIP write ends the block loop; emu_start goes on). */
static void retranslate(X86TrapObject *t, void *uc, uint64_t pc, uint32_t size)
{
    t->ctl(uc, t->remove_cache, pc, pc + (size ? size : 1));
    uint64_t rip;
    void *p = &rip;
    t->read_batch(uc, &t->regs[R_RIP], &p, 1);
    t->reg_write(uc, t->regs[R_RIP], &rip);
}

static void edge_generated(void *uc, uc_tb *cur, uc_tb *prev, void *user)
{
    (void)prev;
    X86TrapObject *t = user;
    if (scan(t, uc, cur->pc, cur->size))
        retranslate(t, uc, cur->pc, cur->size);
}

/* The engine's first block is never reported as an edge: scan it here, once. The block
 * is dropped and the engine stopped before it runs; the run loop starts it again (see
 * `restart`), and from then on every new block is an edge. */
static void first_block(void *uc, uint64_t address, uint32_t size, void *user)
{
    X86TrapObject *t = user;
    if (!t->block_live)
        return;
    t->block_live = 0;
    t->hook_del(uc, t->block_hook);
    scan(t, uc, address, size);
    t->ctl(uc, t->remove_cache, address, address + (size ? size : 1));
    t->restart = 1;
    t->emu_stop(uc);
}

static void msr_site(void *uc, uint64_t address, uint32_t size, void *user)
{
    X86TrapObject *t = user;
    if (size != 2)
        return;
    uint64_t v[3], cr[2];
    void *p[3] = {&v[0], &v[1], &v[2]};
    void *pc[2] = {&cr[0], &cr[1]};
    t->read_batch(uc, t->regs + R_CR0, pc, 2);
    uint8_t b[2];
    if (fetch(t, cr[0], cr[1], address, b, 2) != 2 || b[0] != 0x0F ||
        (b[1] != 0x30 && b[1] != 0x32))
        return; /* the code changed: not an MSR instruction any more */
    int regs[3] = {t->regs[R_RCX], t->regs[R_RAX], t->regs[R_RDX]};
    t->read_batch(uc, regs, p, 3);
    int write = b[1] == 0x30;
    uint64_t index = v[0] & 0xFFFFFFFFull;
    uint64_t value = (v[2] & 0xFFFFFFFFull) << 32 | (v[1] & 0xFFFFFFFFull);
    PyGILState_STATE gil = PyGILState_Ensure();
    t->msr_calls++;
    PyObject *args = Py_BuildValue("(OKK)", write ? Py_True : Py_False,
                                   (unsigned long long)index,
                                   (unsigned long long)(write ? value : 0));
    PyObject *r = args ? PyObject_Call(t->on_msr, args, NULL) : NULL;
    Py_XDECREF(args);
    uint64_t out = 0;
    int serve = 0;
    if (!r) {
        trap_fail(t, uc);
    } else {
        /* None: not ours (the engine runs it); False: Python delivered or reported a
         * fault; otherwise served (a read's value) */
        if (r != Py_None && r != Py_False) {
            out = PyLong_AsUnsignedLongLongMask(r);
            if (PyErr_Occurred())
                trap_fail(t, uc);
            else
                serve = 1;
        }
        Py_DECREF(r);
    }
    PyGILState_Release(gil);
    if (!serve)
        return;
    uint64_t rip = address + 2, lo = out & 0xFFFFFFFFull, hi = out >> 32;
    if (!write) {
        int wregs[2] = {t->regs[R_RAX], t->regs[R_RDX]};
        void *wp[2] = {&lo, &hi};
        t->write_batch(uc, wregs, wp, 2);
    }
    t->reg_write(uc, t->regs[R_RIP], &rip);
}

/* -- object --------------------------------------------------------------------------- */
/* `pointers`: None, or the engine's address of RAX, RBX, RCX, RDX, RSI and RIP. */
static int read_pointers(X86TrapObject *self, PyObject *pointers)
{
    int got = pvkit_register_pointers(pointers, self->at, R_RIP + 1,
                                      "RAX, RBX, RCX, RDX, RSI and RIP");
    self->pointers = got > 0;
    return got < 0 ? -1 : 0;
}

static int trap_init(X86TrapObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"uc", "functions", "remove_cache", "regs", "ram_base", "ram_size",
                             "ram_host", "native", "hypercalls", "watch_msr", "on_call",
                             "on_invalid", "on_msr", "pointers", NULL};
    unsigned long long uc, ram_base, ram_size, ram_host;
    int remove_cache, hypercalls, watch;
    PyObject *functions, *regs, *on_call, *on_invalid, *on_msr, *pointers = Py_None;
    Py_buffer native;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KOiOKKKy*ppOOO|O", kwlist, &uc, &functions,
                                     &remove_cache, &regs, &ram_base, &ram_size, &ram_host,
                                     &native, &hypercalls, &watch, &on_call, &on_invalid,
                                     &on_msr, &pointers))
        return -1;
    if (native.len != 0 && native.len != 3) {
        PyBuffer_Release(&native);
        PyErr_SetString(PyExc_ValueError, "native must be 3 instruction bytes or empty");
        return -1;
    }
    if (self->installed) {
        PyBuffer_Release(&native);
        PyErr_SetString(PyExc_RuntimeError, "trap already installed");
        return -1;
    }
    if (self->has_native)
        PyBuffer_Release(&self->native);
    self->has_native = native.len == 3;
    if (self->has_native)
        self->native = native; /* kept and read at every call: a move rewrites it */
    else
        PyBuffer_Release(&native);
    if (!PyCallable_Check(on_call) || !PyCallable_Check(on_invalid) || !PyCallable_Check(on_msr)) {
        PyErr_SetString(PyExc_TypeError, "on_call, on_invalid and on_msr must be callable");
        return -1;
    }
    unsigned long long f[7];
    if (!PyArg_ParseTuple(functions, "KKKKKKK", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6]))
        return -1;
    PyObject *seq = PySequence_Fast(regs, "regs must be a sequence");
    if (!seq)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != NREGS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "regs needs %d register IDs", NREGS);
        return -1;
    }
    for (int i = 0; i < NREGS; i++)
        self->regs[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    if (PyErr_Occurred())
        return -1;
    if (ram_size < 8) {
        PyErr_SetString(PyExc_ValueError, "RAM too small");
        return -1;
    }
    self->uc = (void *)(uintptr_t)uc;
    self->read_batch = (uc_batch_fn)(uintptr_t)f[0];
    self->write_batch = (uc_batch_fn)(uintptr_t)f[1];
    self->emu_stop = (uc_stop_fn)(uintptr_t)f[2];
    self->hook_add = (uc_hook_add_fn)(uintptr_t)f[3];
    self->hook_del = (uc_hook_del_fn)(uintptr_t)f[4];
    self->ctl = (uc_ctl_fn)(uintptr_t)f[5];
    self->reg_write = (uc_write_fn)(uintptr_t)f[6];
    self->remove_cache = remove_cache;
    self->ram_base = ram_base;
    self->ram_size = ram_size;
    self->ram_host = (const uint8_t *)(uintptr_t)ram_host;
    self->hypercalls = hypercalls;
    self->watch_msr = watch;
    Py_XSETREF(self->on_call, Py_NewRef(on_call));
    Py_XSETREF(self->on_invalid, Py_NewRef(on_invalid));
    Py_XSETREF(self->on_msr, Py_NewRef(on_msr));
    return read_pointers(self, pointers);
}

static PyObject *trap_install(X86TrapObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->uc) {
        PyErr_SetString(PyExc_RuntimeError, "trap not initialised");
        return NULL;
    }
    if (self->installed)
        Py_RETURN_NONE;
    void *uc = self->uc;
    int err = self->hook_add(uc, &self->invalid_hook, UC_HOOK_INSN_INVALID, (void *)x86_invalid,
                             self, (uint64_t)1, (uint64_t)0);
    if (!err && self->watch_msr) {
        err = self->hook_add(uc, &self->edge_hook, UC_HOOK_EDGE_GENERATED, (void *)edge_generated,
                             self, (uint64_t)1, (uint64_t)0);
        if (!err)
            err = self->hook_add(uc, &self->block_hook, UC_HOOK_BLOCK, (void *)first_block, self,
                                 (uint64_t)1, (uint64_t)0);
        self->block_live = !err;
    }
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed with error %d", err);
        return NULL;
    }
    self->installed = 1;
    Py_INCREF(self); /* the engine holds a raw pointer to us until remove() */
    Py_RETURN_NONE;
}

static PyObject *trap_remove(X86TrapObject *self, PyObject *unused)
{
    (void)unused;
    if (self->installed) {
        self->hook_del(self->uc, self->invalid_hook);
        if (self->watch_msr) {
            self->hook_del(self->uc, self->edge_hook);
            if (self->block_live)
                self->hook_del(self->uc, self->block_hook);
            self->block_live = 0;
        }
        for (Py_ssize_t i = 0; i < self->n_sites; i++)
            self->hook_del(self->uc, self->site_hooks[i]);
        self->n_sites = 0;
        self->installed = 0;
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

static void release_values(PyObject **values, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(values[i]);
    PyMem_Free(values);
}

/* A dict of nr -> value as find_nr searches it: the numbers in order, and a new reference
 * to each one's value. */
static int sorted_items(PyObject *dict, uint64_t **nr_out, PyObject ***values_out,
                        Py_ssize_t *n_out)
{
    PyObject *keys = PyDict_Keys(dict);
    if (!keys || PyList_Sort(keys) < 0) {
        Py_XDECREF(keys);
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys);
    uint64_t *nr = PyMem_Calloc((size_t)(n ? n : 1), sizeof(uint64_t));
    PyObject **values = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PyObject *));
    if (!nr || !values) {
        PyMem_Free(nr);
        PyMem_Free(values);
        Py_DECREF(keys);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        nr[i] = PyLong_AsUnsignedLongLong(k);
        values[i] = Py_NewRef(PyDict_GetItem(dict, k));
    }
    Py_DECREF(keys);
    if (PyErr_Occurred()) {
        release_values(values, n);
        PyMem_Free(nr);
        return -1;
    }
    *nr_out = nr;
    *values_out = values;
    *n_out = n;
    return 0;
}

static PyObject *trap_set_answers(X86TrapObject *self, PyObject *answers)
{
    /* answers: {nr: rax}; only read while the engine is stopped */
    if (!PyDict_Check(answers)) {
        PyErr_SetString(PyExc_TypeError, "answers must be a dict of nr -> RAX");
        return NULL;
    }
    uint64_t *nr;
    PyObject **values;
    Py_ssize_t n;
    if (sorted_items(answers, &nr, &values, &n) < 0)
        return NULL;
    uint64_t *rax = PyMem_Calloc((size_t)(n ? n : 1), sizeof(uint64_t));
    for (Py_ssize_t i = 0; rax && i < n; i++)
        rax[i] = PyLong_AsUnsignedLongLongMask(values[i]);
    release_values(values, n);
    if (!rax || PyErr_Occurred()) {
        PyMem_Free(nr);
        PyMem_Free(rax);
        return rax ? NULL : PyErr_NoMemory();
    }
    PyMem_Free(self->answer_nr);
    PyMem_Free(self->answer_rax);
    self->answer_nr = nr;
    self->answer_rax = rax;
    self->n_answers = n;
    self->answers_enabled = 1;
    Py_RETURN_NONE;
}

static void clear_direct(X86TrapObject *self)
{
    release_values(self->direct_fn, self->n_direct);
    PyMem_Free(self->direct_nr);
    self->direct_nr = NULL;
    self->direct_fn = NULL;
    self->n_direct = 0;
}

static PyObject *trap_set_direct(X86TrapObject *self, PyObject *args)
{
    /* ({nr: handler}, on_error, vcpu); only while the engine is stopped */
    PyObject *direct, *on_error, *vcpu;
    if (!PyArg_ParseTuple(args, "O!OO", &PyDict_Type, &direct, &on_error, &vcpu))
        return NULL;
    uint64_t *nr;
    PyObject **fn;
    Py_ssize_t n;
    if (sorted_items(direct, &nr, &fn, &n) < 0)
        return NULL;
    clear_direct(self);
    self->direct_nr = nr;
    self->direct_fn = fn;
    self->n_direct = n;
    Py_XSETREF(self->on_error, on_error == Py_None ? NULL : Py_NewRef(on_error));
    Py_XSETREF(self->vcpu, Py_NewRef(vcpu));
    Py_RETURN_NONE;
}

static PyObject *trap_take_error(X86TrapObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *e = self->error;
    self->error = NULL;
    return e ? e : Py_NewRef(Py_None);
}

static PyObject *trap_take_restart(X86TrapObject *self, PyObject *unused)
{
    (void)unused;
    int r = self->restart;
    self->restart = 0;
    return PyBool_FromLong(r);
}

static PyObject *trap_sites(X86TrapObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    if (self->site_zero) {
        PyObject *z = PyLong_FromLong(0);
        if (!z || PyList_Append(out, z) < 0) {
            Py_XDECREF(z);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(z);
    }
    for (size_t i = 0; self->site_set && i <= self->set_mask; i++) {
        if (!self->site_set[i])
            continue;
        PyObject *a = PyLong_FromUnsignedLongLong(self->site_set[i]);
        if (!a || PyList_Append(out, a) < 0) {
            Py_XDECREF(a);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(a);
    }
    if (PyList_Sort(out) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static int trap_traverse(X86TrapObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->on_call);
    Py_VISIT(self->on_invalid);
    Py_VISIT(self->on_msr);
    Py_VISIT(self->error);
    Py_VISIT(self->on_error);
    Py_VISIT(self->vcpu);
    for (Py_ssize_t i = 0; i < self->n_direct; i++)
        Py_VISIT(self->direct_fn[i]);
    return 0;
}

static int trap_clear(X86TrapObject *self)
{
    Py_CLEAR(self->on_call);
    Py_CLEAR(self->on_invalid);
    Py_CLEAR(self->on_msr);
    Py_CLEAR(self->error);
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->vcpu);
    clear_direct(self);
    return 0;
}

static void trap_dealloc(X86TrapObject *self)
{
    PyObject_GC_UnTrack(self);
    trap_clear(self);
    if (self->has_native)
        PyBuffer_Release(&self->native);
    free(self->site_hooks);
    free(self->site_set);
    PyMem_Free(self->answer_nr);
    PyMem_Free(self->answer_rax);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *get_enabled(X86TrapObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->answers_enabled);
}

static int set_enabled(X86TrapObject *self, PyObject *value, void *closure)
{
    (void)closure;
    int v = value ? PyObject_IsTrue(value) : -1;
    if (v < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "answers_enabled cannot be deleted");
        return -1;
    }
    self->answers_enabled = v;
    return 0;
}

static PyMethodDef trap_methods[] = {
    {"install", (PyCFunction)trap_install, METH_NOARGS, "add the hooks"},
    {"remove", (PyCFunction)trap_remove, METH_NOARGS, "delete every hook (idempotent)"},
    {"set_answers", (PyCFunction)trap_set_answers, METH_O,
     "constant answers: {nr: RAX} for CPL-0 64-bit callers"},
    {"set_direct", (PyCFunction)trap_set_direct, METH_VARARGS,
     "direct handlers: ({nr: handler}, on_error, vcpu) for CPL-0 64-bit callers"},
    {"take_error", (PyCFunction)trap_take_error, METH_NOARGS,
     "the exception the Python side raised inside a hook, once, or None"},
    {"take_restart", (PyCFunction)trap_take_restart, METH_NOARGS,
     "True once after the first-block scan stopped the engine (run it again)"},
    {"sites", (PyCFunction)trap_sites, METH_NOARGS, "the hooked RDMSR/WRMSR addresses"},
    {NULL}};

static PyGetSetDef trap_getset[] = {
    {"answers_enabled", (getter)get_enabled, (setter)set_enabled,
     "False while tracing: every call then reaches the dispatcher", NULL},
    {NULL}};

static PyMemberDef trap_members[] = {
    {"python_calls", T_ULONGLONG, offsetof(X86TrapObject, python_calls), READONLY,
     "hypercalls that reached Python (the dispatcher, or a direct handler)"},
    {"pointers", T_INT, offsetof(X86TrapObject, pointers), READONLY,
     "1 when a hypercall's registers are loaded and stored where the engine keeps them"},
    {"direct_calls", T_ULONGLONG, offsetof(X86TrapObject, direct_calls), READONLY,
     "hypercalls served by a direct handler"},
    {"table_hits", T_ULONGLONG, offsetof(X86TrapObject, table_hits), READONLY,
     "hypercalls answered from the answer table"},
    {"msr_calls", T_ULONGLONG, offsetof(X86TrapObject, msr_calls), READONLY,
     "RDMSR/WRMSR that reached Python"},
    {"scans", T_ULONGLONG, offsetof(X86TrapObject, scans), READONLY,
     "translated blocks scanned for RDMSR/WRMSR"},
    {NULL}};

static PyTypeObject X86TrapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvkit.backends.x86._x86trap.X86Trap",
    .tp_basicsize = sizeof(X86TrapObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hypercall and MSR traps of one x86-64 vCPU engine",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)trap_init,
    .tp_dealloc = (destructor)trap_dealloc,
    .tp_traverse = (traverseproc)trap_traverse,
    .tp_clear = (inquiry)trap_clear,
    .tp_methods = trap_methods,
    .tp_getset = trap_getset,
    .tp_members = trap_members,
};

static struct PyModuleDef trap_module = {
    PyModuleDef_HEAD_INIT, "_x86trap", "C hot path for x86 hypercall and MSR traps", -1, NULL,
};

PyMODINIT_FUNC PyInit__x86trap(void)
{
    if (PyType_Ready(&X86TrapType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&trap_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "X86Trap", (PyObject *)&X86TrapType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
