"""A user's own device tree (`--dtb FILE`), patched where the VM must have its say.

As QEMU does with -dtb (hw/arm/boot.c), the file is loaded rather than replaced, and only
what the VM decides is written into it: the memory node (the RAM this VM has), the
kernel command line and the initrd in /chosen, and the regions pvkit's services carve
out of RAM (as /reserved-memory children, no-map). Every change is listed so the CLI can
say what it touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import libfdt

from pvkit.loader.image import ImageError
from pvkit.machine.memory import Region

_SLACK = 4096  # room for the properties added below
_FDT_MAGIC = bytes.fromhex("d00dfeed")
_HEADER_SIZE = 40  # Devicetree Specification 5.2: ten big-endian 32-bit words


def _cells(value: int, count: int) -> bytes:
    return value.to_bytes(4 * count, "big")


def _root_cells(fdt: libfdt.Fdt) -> tuple[int, int]:
    """#address-cells and #size-cells of the root (Devicetree Specification 2.3.5:
    defaults 2 and 1)."""

    def get(name: str, default: int) -> int:
        prop = fdt.getprop(0, name, libfdt.QUIET_NOTFOUND)
        return default if isinstance(prop, int) else prop.as_uint32()

    return get("#address-cells", 2), get("#size-cells", 1)


def _reg(region: Region, acells: int, scells: int) -> bytes:
    if region.base >> (32 * acells) or region.size >> (32 * scells):
        raise ImageError(
            f"the DTB's root #address-cells/#size-cells ({acells}/{scells}) cannot describe "
            f"{region.base:#x}+{region.size:#x}"
        )
    return _cells(region.base, acells) + _cells(region.size, scells)


def _node(fdt: libfdt.Fdt, parent: int, name: str) -> int:
    off = fdt.subnode_offset(parent, name, libfdt.QUIET_NOTFOUND)
    return off if off >= 0 else int(fdt.add_subnode(parent, name))


def patch_user_dtb(
    blob: bytes,
    source: str,
    ram: Region,
    bootargs: str,
    initrd: Region | None,
    reserved: Sequence[Region],
) -> tuple[bytes, list[str]]:
    """The patched blob and what was changed; ImageError if `blob` is not a usable DTB."""
    # libfdt trusts the header's sizes and offsets: check them against the file first, or
    # a truncated or crafted file makes it read past the buffer.
    if len(blob) < _HEADER_SIZE or blob[:4] != _FDT_MAGIC:
        raise ImageError(f"{source} is not a flattened device tree (no FDT header)")
    total, struct_off, strings_off, rsv_off = (
        int.from_bytes(blob[i : i + 4], "big") for i in (4, 8, 12, 16)
    )
    if total > len(blob) or max(struct_off, strings_off, rsv_off) >= total:
        raise ImageError(
            f"{source} is not a flattened device tree (its header claims {total} bytes "
            f"and offsets beyond what the {len(blob)}-byte file holds)"
        )
    try:
        fdt = libfdt.Fdt(bytearray(blob))
        fdt.resize(fdt.totalsize() + _SLACK + 64 * len(reserved) + len(bootargs))
    except libfdt.FdtException as exc:
        raise ImageError(f"{source} is not a flattened device tree ({exc})") from None
    changes: list[str] = []
    try:
        acells, scells = _root_cells(fdt)
        off = fdt.first_subnode(0, libfdt.QUIET_NOTFOUND)
        stale: list[str] = []
        while off >= 0:
            name = fdt.get_name(off)
            if name == "memory" or name.startswith("memory@"):
                stale.append(name)
            off = fdt.next_subnode(off, libfdt.QUIET_NOTFOUND)
        for name in stale:
            fdt.del_node(fdt.subnode_offset(0, name))
        mem = fdt.add_subnode(0, f"memory@{ram.base:x}")
        fdt.setprop_str(mem, "device_type", "memory")
        fdt.setprop(mem, "reg", _reg(ram, acells, scells))
        changes.append(f"memory {ram.base:#x}+{ram.size >> 20} MiB")

        chosen = _node(fdt, 0, "chosen")
        if bootargs:
            fdt.setprop_str(chosen, "bootargs", bootargs)
            changes.append("/chosen/bootargs")
        if initrd is not None:
            fdt.setprop_u64(chosen, "linux,initrd-start", initrd.base)
            fdt.setprop_u64(chosen, "linux,initrd-end", initrd.end)
            changes.append("/chosen/linux,initrd-start and -end")

        if reserved:
            rmem = fdt.subnode_offset(0, "reserved-memory", libfdt.QUIET_NOTFOUND)
            if rmem < 0:
                rmem = fdt.add_subnode(0, "reserved-memory")
                fdt.setprop_u32(rmem, "#address-cells", acells)
                fdt.setprop_u32(rmem, "#size-cells", scells)
                fdt.setprop(rmem, "ranges", b"")
            r_acells = fdt.getprop(rmem, "#address-cells").as_uint32()
            r_scells = fdt.getprop(rmem, "#size-cells").as_uint32()
            for r in reserved:
                child = _node(fdt, rmem, f"{r.name}@{r.base:x}")
                fdt.setprop(child, "reg", _reg(r, r_acells, r_scells))
                fdt.setprop(child, "no-map", b"")
                changes.append(f"/reserved-memory/{r.name}@{r.base:x}")
        fdt.pack()
    except libfdt.FdtException as exc:
        raise ImageError(f"cannot patch the device tree {source} ({exc})") from None
    return bytes(fdt.as_bytearray()), changes
