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
#endif
