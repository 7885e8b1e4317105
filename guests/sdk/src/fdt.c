/* Device-tree reader: just enough to find /psci, /hypervisor and the CPUs, never trusting sizes. */
#include <pvkit/fdt.h>

#define FDT_MAGIC 0xd00dfeed
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_END 9

uint32_t fdt_be32(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint32_t hdr(const void *fdt, int field) { return fdt_be32((const uint8_t *)fdt + 4 * field); }
static const uint8_t *structs(const void *fdt) { return (const uint8_t *)fdt + hdr(fdt, 2); }
static uint32_t structs_size(const void *fdt) { return hdr(fdt, 9); }
static const char *strings(const void *fdt) { return (const char *)fdt + hdr(fdt, 3); }

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static uint32_t slen(const char *s)
{
    uint32_t n = 0;
    while (s[n])
        n++;
    return n;
}

int fdt_check(const void *fdt)
{
    if (!fdt || ((uintptr_t)fdt & 7) || hdr(fdt, 0) != FDT_MAGIC)
        return -1;
    uint32_t total = hdr(fdt, 1);
    if (hdr(fdt, 2) + structs_size(fdt) > total || hdr(fdt, 3) > total || hdr(fdt, 5) < 16)
        return -1;
    return 0;
}

/* Token at `off`; advances `off` past it and reports the node name or property. */
static uint32_t next_token(const void *fdt, int *off, const char **name, const uint8_t **val,
                           uint32_t *len)
{
    const uint8_t *s = structs(fdt);
    uint32_t size = structs_size(fdt);
    for (;;) {
        if ((uint32_t)*off + 4 > size)
            return FDT_END;
        uint32_t tok = fdt_be32(s + *off);
        *off += 4;
        switch (tok) {
        case FDT_BEGIN_NODE:
            *name = (const char *)s + *off;
            *off += (slen(*name) + 4) & ~3u;
            return tok;
        case FDT_PROP:
            *len = fdt_be32(s + *off);
            *name = strings(fdt) + fdt_be32(s + *off + 4);
            *val = s + *off + 8;
            *off += 8 + ((*len + 3) & ~3u);
            return tok;
        case FDT_NOP:
            continue;
        default:
            return tok;
        }
    }
}

/* Offset just past the END_NODE of the node whose BEGIN_NODE is at `node`. */
static int skip_node(const void *fdt, int node)
{
    int off = node, depth = 0;
    const char *name;
    const uint8_t *val;
    uint32_t len;
    for (;;) {
        uint32_t tok = next_token(fdt, &off, &name, &val, &len);
        if (tok == FDT_BEGIN_NODE)
            depth++;
        else if (tok == FDT_END_NODE && --depth == 0)
            return off;
        else if (tok == FDT_END)
            return -1;
    }
}

int fdt_next_child(const void *fdt, int node, int prev)
{
    int off;
    const char *name;
    const uint8_t *val;
    uint32_t len;
    if (prev < 0) {
        off = node;
        next_token(fdt, &off, &name, &val, &len); /* the node's own BEGIN_NODE */
    } else {
        off = skip_node(fdt, prev);
        if (off < 0)
            return -1;
    }
    for (;;) {
        int here = off;
        uint32_t tok = next_token(fdt, &off, &name, &val, &len);
        if (tok == FDT_BEGIN_NODE)
            return here;
        if (tok != FDT_PROP)
            return -1;
    }
}

static int node_name_matches(const void *fdt, int node, const char *want, uint32_t n)
{
    int off = node;
    const char *name;
    const uint8_t *val;
    uint32_t len;
    next_token(fdt, &off, &name, &val, &len);
    for (uint32_t i = 0; i < n; i++)
        if (name[i] != want[i])
            return 0;
    return name[n] == '\0' || name[n] == '@';
}

int fdt_path(const void *fdt, const char *path)
{
    int node = 0;
    while (*path == '/')
        path++;
    while (*path) {
        uint32_t n = 0;
        while (path[n] && path[n] != '/')
            n++;
        int child = -1;
        while ((child = fdt_next_child(fdt, node, child)) >= 0)
            if (node_name_matches(fdt, child, path, n))
                break;
        if (child < 0)
            return -1;
        node = child;
        path += n;
        while (*path == '/')
            path++;
    }
    return node;
}

const void *fdt_prop(const void *fdt, int node, const char *want, uint32_t *lenp)
{
    int off = node;
    const char *name;
    const uint8_t *val;
    uint32_t len;
    if (node < 0)
        return 0;
    next_token(fdt, &off, &name, &val, &len);
    for (;;) {
        uint32_t tok = next_token(fdt, &off, &name, &val, &len);
        if (tok != FDT_PROP)
            return 0;
        if (streq(name, want)) {
            if (lenp)
                *lenp = len;
            return val;
        }
    }
}

int fdt_prop_has_string(const void *fdt, int node, const char *name, const char *value)
{
    uint32_t len;
    const char *p = fdt_prop(fdt, node, name, &len);
    if (!p || len == 0 || p[len - 1] != '\0')
        return 0;
    for (uint32_t i = 0; i < len; i += slen(p + i) + 1)
        if (streq(p + i, value))
            return 1;
    return 0;
}

const char *fdt_bootargs(const void *fdt)
{
    uint32_t len;
    int chosen = fdt_check(fdt) == 0 ? fdt_path(fdt, "/chosen") : -1;
    const char *args = chosen >= 0 ? fdt_prop(fdt, chosen, "bootargs", &len) : 0;
    return args && len > 0 && args[len - 1] == 0 ? args : 0;
}

int fdt_find_compatible(const void *fdt, const char *compat, int *parent)
{
    enum { MAX_DEPTH = 16 };
    int stack[MAX_DEPTH];
    int depth = 0, off = 0;
    const char *name;
    const uint8_t *val;
    uint32_t len;
    if (fdt_check(fdt))
        return -1;
    for (;;) {
        int here = off;
        uint32_t tok = next_token(fdt, &off, &name, &val, &len);
        if (tok == FDT_BEGIN_NODE) {
            if (depth == MAX_DEPTH)
                return -1;
            stack[depth++] = here;
            if (fdt_prop_has_string(fdt, here, "compatible", compat)) {
                if (parent)
                    *parent = depth >= 2 ? stack[depth - 2] : -1;
                return here;
            }
        } else if (tok == FDT_END_NODE) {
            if (--depth <= 0)
                return -1;
        } else if (tok != FDT_PROP) {
            return -1;
        }
    }
}

static uint32_t cells(const void *fdt, int node, const char *name, uint32_t dflt)
{
    uint32_t len;
    const void *p = fdt_prop(fdt, node, name, &len);
    return p && len == 4 ? fdt_be32(p) : dflt;
}

int fdt_reg(const void *fdt, int parent, int node, int index, uint64_t *addr, uint64_t *size)
{
    uint32_t ac = cells(fdt, parent, "#address-cells", 2);
    uint32_t sc = cells(fdt, parent, "#size-cells", 1);
    uint32_t len;
    const uint8_t *reg = fdt_prop(fdt, node, "reg", &len);
    if (!reg || ac < 1 || ac > 2 || sc > 2 || index < 0)
        return -1;
    uint32_t entry = 4 * (ac + sc);
    if ((uint64_t)(index + 1) * entry > len)
        return -1;
    reg += (uint32_t)index * entry;
    uint64_t a = 0, s = 0;
    for (uint32_t i = 0; i < ac; i++)
        a = a << 32 | fdt_be32(reg + 4 * i);
    for (uint32_t i = 0; i < sc; i++)
        s = s << 32 | fdt_be32(reg + 4 * (ac + i));
    *addr = a;
    if (size)
        *size = s;
    return 0;
}

uint64_t bootarg_uint(const char *args, const char *key, uint64_t dflt)
{
    for (const char *p = args; p && *p; p++) {
        if (p != args && p[-1] != ' ')
            continue;
        uint32_t n = 0;
        while (key[n] && p[n] == key[n])
            n++;
        if (key[n] || p[n] != '=')
            continue;
        const char *s = p + n + 1;
        unsigned base = 10;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
            base = 16;
            s += 2;
        }
        uint64_t v = 0;
        int digits = 0;
        for (;; s++, digits++) {
            unsigned d;
            if (*s >= '0' && *s <= '9')
                d = (unsigned)(*s - '0');
            else if (base == 16 && *s >= 'a' && *s <= 'f')
                d = (unsigned)(*s - 'a' + 10);
            else if (base == 16 && *s >= 'A' && *s <= 'F')
                d = (unsigned)(*s - 'A' + 10);
            else
                break;
            v = v * base + d;
        }
        return digits && (*s == 0 || *s == ' ') ? v : dflt;
    }
    return dflt;
}

int bootarg_has(const char *args, const char *word)
{
    for (const char *p = args; p && *p; p++) {
        if (p != args && p[-1] != ' ')
            continue;
        uint32_t n = 0;
        while (word[n] && p[n] == word[n])
            n++;
        if (!word[n] && (p[n] == 0 || p[n] == ' '))
            return 1;
    }
    return 0;
}
