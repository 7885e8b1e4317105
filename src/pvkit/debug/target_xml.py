"""The target description gdb reads with qXfer:features:read (gdb manual, "Target
Descriptions"): the architecture and every register, numbered in the order the stub's
`g` and `p` packets use, grouped in the features gdb knows (core, fpu/sse) and one of
pvkit's own for the system registers. The vector and flag types are defined here.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

from pvkit.backends.debug_port import DebugRegister


def _vectors(spec: str) -> str:
    """`id:type:count ...` -> vector types."""
    out = []
    for item in spec.split():
        id_, kind, count = item.split(":")
        out.append(f'<vector id="{id_}" type="{kind}" count="{count}"/>')
    return "".join(out)


def _union(id_: str, spec: str) -> str:
    """`name:type ...` -> a union type."""
    body = "".join(
        f'<field name="{n}" type="{t}"/>' for n, t in (f.split(":") for f in spec.split())
    )
    return f'<union id="{id_}">{body}</union>'


def _flags(id_: str, size: int, spec: str) -> str:
    """`name:bit ...` -> a flags type."""
    fields = (f.split(":") for f in spec.split())
    body = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in fields)
    return f'<flags id="{id_}" size="{size}">{body}</flags>'


# aarch64: v0-v31 are views of one 128-bit register, as gdb's own aarch64 fpu feature has it.
_AARCH64_FPU = "".join(
    [
        _vectors(
            "v2d:ieee_double:2 v2u:uint64:2 v2i:int64:2 v4f:ieee_single:4 v4u:uint32:4 "
            "v4i:int32:4 v8f:ieee_half:8 v8u:uint16:8 v8i:int16:8 v16u:uint8:16 v16i:int8:16 "
            "v1u:uint128:1 v1i:int128:1"
        ),
        _union("vnd", "f:v2d u:v2u s:v2i"),
        _union("vns", "f:v4f u:v4u s:v4i"),
        _union("vnh", "f:v8f u:v8u s:v8i"),
        _union("vnb", "u:v16u s:v16i"),
        _union("vnq", "u:v1u s:v1i"),
        _union("aarch64v", "d:vnd s:vns h:vnh b:vnb q:vnq"),
    ]
)
_X86_CORE = _flags(
    "i386_eflags",
    4,
    "CF:0 PF:2 AF:4 ZF:6 SF:7 TF:8 IF:9 DF:10 OF:11 NT:14 RF:16 VM:17 AC:18 VIF:19 VIP:20 ID:21",
)
_X86_SSE = "".join(
    [
        _vectors(
            "v4f:ieee_single:4 v2d:ieee_double:2 v16i8:int8:16 v8i16:int16:8 "
            "v4i32:int32:4 v2i64:int64:2"
        ),
        _union(
            "vec128",
            "v4_float:v4f v2_double:v2d v16_int8:v16i8 v8_int16:v8i16 v4_int32:v4i32 "
            "v2_int64:v2i64 uint128:uint128",
        ),
        _flags(
            "i386_mxcsr",
            4,
            "IE:0 DE:1 ZE:2 OE:3 UE:4 PE:5 DAZ:6 IM:7 DM:8 ZM:9 OM:10 UM:11 PM:12 FZ:15",
        ),
    ]
)
FEATURE_TYPES = {
    "org.gnu.gdb.aarch64.fpu": _AARCH64_FPU,
    "org.gnu.gdb.i386.core": _X86_CORE,
    "org.gnu.gdb.i386.sse": _X86_SSE,
}


def target_xml(architecture: str, registers: Sequence[DebugRegister]) -> bytes:
    features: dict[str, list[str]] = {}
    for number, reg in enumerate(registers):
        group = f" group={quoteattr(reg.group)}" if reg.group else ""
        features.setdefault(reg.feature, []).append(
            f'<reg name={quoteattr(reg.name)} bitsize="{reg.bits}" type={quoteattr(reg.type)}'
            f' regnum="{number}"{group}/>'
        )
    parts = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
        '<target version="1.0">',
        f"<architecture>{architecture}</architecture>",
    ]
    for name, regs in features.items():
        parts.append(f"<feature name={quoteattr(name)}>")
        parts.append(FEATURE_TYPES.get(name, ""))
        parts.extend(regs)
        parts.append("</feature>")
    parts.append("</target>")
    return "\n".join(p for p in parts if p).encode()
