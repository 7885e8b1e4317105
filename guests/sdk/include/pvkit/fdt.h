/* A minimal, bounds-checked flattened-device-tree reader (read-only). */
#ifndef PVKIT_FDT_H
#define PVKIT_FDT_H
#include <pvkit/types.h>
/* Returns 0 when `fdt` points at a well-formed DTB header. */
int fdt_check(const void *fdt);
/* Offset of the node at an absolute path such as "/psci", or -1. */
int fdt_path(const void *fdt, const char *path);
/* Pointer to a property's value and its length, or 0 when absent. */
const void *fdt_prop(const void *fdt, int node, const char *name, uint32_t *len);
/* 1 when the string list property `name` of `node` contains `value`. */
int fdt_prop_has_string(const void *fdt, int node, const char *name, const char *value);
/* Walk the direct children of `node`: pass -1 first, returns -1 when done. */
int fdt_next_child(const void *fdt, int node, int prev);
uint32_t fdt_be32(const void *p);
/* /chosen/bootargs as a NUL-terminated string, or 0. */
const char *fdt_bootargs(const void *fdt);
/* The first node (depth-first, document order) whose "compatible" lists `compat`, or -1; its
 * parent's offset goes to *parent (for #address-cells and #size-cells) when `parent` is set. */
int fdt_find_compatible(const void *fdt, const char *compat, int *parent);
/* Entry `index` of the "reg" property of `node`, sized by `parent`'s cells: 0, or -1 if absent. */
int fdt_reg(const void *fdt, int parent, int node, int index, uint64_t *addr, uint64_t *size);
/* Value of the word `key=N` in `args` (decimal, or hex with 0x), else `dflt`. */
uint64_t bootarg_uint(const char *args, const char *key, uint64_t dflt);
/* 1 when `word` appears in `args` as a whole word. */
int bootarg_has(const char *args, const char *word);
#endif
