"""QEMU-style boot options on the virt board: where the initrd and the DTB go, --dtb,
--dump-dtb, --bios, --no-reboot and the single-dash spellings QEMU users type.

The layout is QEMU's (hw/arm/boot.c), so the reference is QEMU itself: `-M virt,dumpdtb=`
writes the tree QEMU would hand the kernel, with the initrd in /chosen.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import libfdt
import pytest

from pvkit.machine.memory import Region
from pvkit.machine.vm import StopKind
from pvkit.platform.virt_arm64 import RAM_BASE, VirtArm64, VirtConfig

from .conftest import SMP_HELLO, assemble, boot, pvkit

QEMU = shutil.which("qemu-system-aarch64")
MiB = 1 << 20
PAGE = 0x1000
FDT_MAGIC = 0xD00DFEED
UART = "ldr x20, =0x09000000\n"


# -- helpers ---------------------------------------------------------------------------
def one_sentence(r: subprocess.CompletedProcess[str]) -> str:
    """A usage error: exit 2 and a single `pvkit: ...` line, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvkit: "), r.stderr
    return lines[0]


def prop(blob: bytes, path: str, name: str) -> bytes:
    fdt = libfdt.Fdt(blob)
    return bytes(fdt.getprop(fdt.path_offset(path), name))


def number(blob: bytes, path: str, name: str) -> int:
    """A property as one big-endian number, whatever its cell count (QEMU writes the
    initrd bounds as one cell, pvkit as two; Linux reads either)."""
    return int.from_bytes(prop(blob, path, name), "big")


def initrd_bounds(blob: bytes) -> tuple[int, int]:
    return (
        number(blob, "/chosen", "linux,initrd-start"),
        number(blob, "/chosen", "linux,initrd-end"),
    )


def dts(blob: bytes) -> str:
    """Decompiled with dtc, which also proves the blob is well formed."""
    out = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", "-q", "-"], input=blob, capture_output=True, check=True
    )
    return out.stdout.decode()


def dtc_compile(tmp_path: Path, source: str, name: str = "user") -> Path:
    src = tmp_path / f"{name}.dts"
    src.write_text(source)
    out = tmp_path / f"{name}.dtb"
    subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(out), str(src)], check=True)
    return out


def random_file(path: Path, size: int) -> Path:
    """`size` reproducible random bytes (no two pages alike, so misplaced copies show)."""
    path.write_bytes(random.Random(size).randbytes(size))
    return path


def sized_image(tmp_path: Path, image_size: int) -> Path:
    """smp-hello with the Image header's image_size raised (as a kernel with a large bss):
    what the loader must keep clear is the header's size, not the file's."""
    blob = bytearray(SMP_HELLO.read_bytes())
    struct.pack_into("<Q", blob, 16, image_size)
    path = tmp_path / "big-bss.Image"
    path.write_bytes(bytes(blob))
    return path


def qemu_dtb(tmp_path: Path, *args: str) -> bytes:
    """The DTB QEMU's virt board would boot with these options (-M virt,dumpdtb=)."""
    assert QEMU is not None
    out = tmp_path / "qemu.dtb"
    cmd = [QEMU, "-M", f"virt,dumpdtb={out}", "-cpu", "max", *args]
    cmd += ["-nographic", "-nic", "none", "-monitor", "none", "-serial", "none"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return out.read_bytes()


def pvkit_dtb(tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / "pvkit.dtb"
    r = pvkit("run", *args, "--dump-dtb", str(out), "--timeout", "30")
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


# -- tiny guests that print what they were handed -----------------------------------------
# puts(x1) and puthex(x0) on the PL011 at x20; position independent, so the same code runs
# linked anywhere, from flash or from RAM.
ROUTINES = r"""
puts:
    ldrb w2, [x1], #1
    cbz w2, 1f
    strb w2, [x20]
    b puts
1:  ret
puthex:
    mov x3, #60
2:  lsr x4, x0, x3
    and x4, x4, #0xf
    cmp x4, #10
    add x5, x4, #'0'
    add x6, x4, #('a' - 10)
    csel x4, x5, x6, lo
    strb w4, [x20]
    subs x3, x3, #4
    b.pl 2b
    ret
"""
OFF = "ldr x0, =0x84000008\nhvc #0\nb .\n"
# Firmware: where it runs, its x0 and the first word at the RAM base (big-endian).
FIRMWARE = (
    r"""
    mov x19, x0
    ldr x20, =0x09000000
    adr x1, msg_pc
    bl puts
    adr x0, _start
    bl puthex
    adr x1, msg_x0
    bl puts
    mov x0, x19
    bl puthex
    adr x1, msg_ram
    bl puts
    ldr x2, =0x40000000
    ldr w0, [x2]
    rev w0, w0
    bl puthex
"""
    + OFF
    + ROUTINES
    + r"""
msg_pc: .asciz "fw: pc="
msg_x0: .asciz " x0="
msg_ram: .asciz " ram[0]="
"""
)
# A kernel: its x0 (the DTB's address) and the first word there.
KERNEL = (
    r"""
    mov x19, x0
    ldr x20, =0x09000000
    adr x1, msg_x0
    bl puts
    mov x0, x19
    bl puthex
    adr x1, msg_at
    bl puts
    ldr w0, [x19]
    rev w0, w0
    bl puthex
"""
    + OFF
    + ROUTINES
    + r"""
msg_x0: .asciz "x0="
msg_at: .asciz " [x0]="
"""
)


def image_header(image_size: int) -> str:
    """An arm64 Image header (booting.rst): text_offset 0, 4 KiB pages, little endian."""
    return (
        "b 3f\n.word 0\n.quad 0\n"
        f'.quad {image_size:#x}\n.quad 2\n.quad 0, 0, 0\n.ascii "ARM\\x64"\n.word 0\n3:\n'
    )


def flat_binary(tmp_path: Path, source: str, name: str) -> Path:
    """Assembled, linked at 0x0 and objcopy'd: a flash image, a raw kernel, an Image."""
    src = tmp_path / f"{name}.S"
    src.write_text(".text\n.globl _start\n_start:\n" + source + "\n")
    elf = tmp_path / f"{name}.elf"
    flat = tmp_path / f"{name}.bin"
    cc = ["aarch64-linux-gnu-gcc", "-nostdlib", "-static", "-Wl,-Ttext=0x0"]
    subprocess.run([*cc, "-Wl,--build-id=none", "-o", str(elf), str(src)], check=True)
    subprocess.run(["aarch64-linux-gnu-objcopy", "-O", "binary", str(elf), str(flat)], check=True)
    return flat


def firmware(tmp_path: Path, source: str = FIRMWARE) -> Path:
    return flat_binary(tmp_path, source, "fw")


def qemu_console(*args: str) -> list[str]:
    assert QEMU is not None
    cmd = [QEMU, "-M", "virt", "-cpu", "max", "-nographic", "-nic", "none", "-monitor", "none"]
    cmd += ["-serial", "stdio", "-no-reboot", *args]
    out = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode(errors="replace").replace("\r", "").splitlines()


# -- where the initrd and the DTB go ---------------------------------------------------
LAYOUTS = [
    # (RAM, initrd bytes, Image header image_size or None, where QEMU puts the initrd)
    pytest.param("256M", 5000, None, RAM_BASE + 128 * MiB, id="256M: RAM+128MiB"),
    pytest.param("64M", 5000, None, RAM_BASE + 32 * MiB, id="64M: RAM+RAM/2"),
    pytest.param("256M", 100 * MiB, None, RAM_BASE + 128 * MiB, id="256M: 100MiB initrd"),
    # Image at RAM + 2 MiB with a 200 MiB image_size ends past RAM + 128 MiB.
    pytest.param("512M", 5000, 200 * MiB, RAM_BASE + 202 * MiB, id="512M: past the image"),
    pytest.param(
        "512M", 5000, 200 * MiB + 0x123, RAM_BASE + 202 * MiB + PAGE, id="512M: next page"
    ),
]


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-aarch64 is not installed")
@pytest.mark.parametrize(("mem", "size", "image_size", "start"), LAYOUTS)
def test_the_initrd_lands_where_qemu_puts_it(
    tmp_path: Path, mem: str, size: int, image_size: int | None, start: int
) -> None:
    """QEMU: RAM + min(RAM/2, 128 MiB), or past the kernel if that is higher, page aligned;
    the end is start + the file's size. pvkit's --dump-dtb must name the same range."""
    kernel = SMP_HELLO if image_size is None else sized_image(tmp_path, image_size)
    initrd = random_file(tmp_path / "initrd", size)
    args = ["-m", mem, "-kernel", str(kernel), "-initrd", str(initrd)]
    qemu = initrd_bounds(qemu_dtb(tmp_path, *args))
    ours = initrd_bounds(pvkit_dtb(tmp_path, *args))
    assert ours == qemu == (start, start + size)
    assert start % PAGE == 0


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-aarch64 is not installed")
@pytest.mark.parametrize(
    ("mem", "initrd", "image_size", "dtb"),
    [
        ("256M", False, None, RAM_BASE + 128 * MiB),
        ("256M", True, None, RAM_BASE + 130 * MiB),
        ("64M", True, None, RAM_BASE + 34 * MiB),
        ("1G", True, None, RAM_BASE + 130 * MiB),
        ("512M", False, 200 * MiB, RAM_BASE + 202 * MiB),
        ("512M", True, 200 * MiB, RAM_BASE + 204 * MiB),
    ],
)
def test_the_kernel_gets_the_dtb_where_qemu_puts_it(
    tmp_path: Path, mem: str, initrd: bool, image_size: int | None, dtb: int
) -> None:
    """dumpdtb does not show where QEMU loads the DTB, but the kernel's x0 does: a tiny
    kernel (raw, or an Image whose header claims `image_size`) prints x0 and the word
    there, under QEMU and under pvkit, and both must say the same."""
    header = "" if image_size is None else image_header(image_size)
    kernel = flat_binary(tmp_path, header + KERNEL, "kernel")
    args = ["-m", mem, "-kernel", str(kernel)]
    if initrd:
        args += ["-initrd", str(random_file(tmp_path / "initrd", 5000))]
    expected = [f"x0={dtb:016x} [x0]={FDT_MAGIC:016x}"]
    assert qemu_console(*args) == expected
    r = pvkit("run", *args, "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == expected


@pytest.mark.parametrize(
    ("mem", "size", "image_size"),
    [
        (256 * MiB, 5000, None),
        (64 * MiB, 5000, None),
        (256 * MiB, 100 * MiB, None),
        (64 * MiB, 30 * MiB - 1, None),  # the DTB in RAM's last 2 MiB block
        (512 * MiB, 5000, 200 * MiB),
        (256 * MiB, 0, None),
    ],
)
def test_the_dtb_follows_the_initrd_as_booting_rst_requires(
    tmp_path: Path, mem: int, size: int, image_size: int | None
) -> None:
    """virt_boot.py: the DTB goes at the first 2 MiB boundary after the initrd (QEMU's
    rule). booting.rst asks for an 8-byte aligned blob of at most 2 MiB in RAM, within
    one 2 MiB block, clear of the kernel and the initrd; x0 must point at it."""
    kernel = SMP_HELLO if image_size is None else sized_image(tmp_path, image_size)
    initrd = random_file(tmp_path / "initrd", size) if size else None
    m = VirtArm64(VirtConfig(memory=mem, initrd=initrd, console=lambda b: None), kernel)
    ram = m.memory.region
    rd = m.plan.layout.initrd
    rd_start = RAM_BASE + min(mem // 2, 128 * MiB)
    if image_size is not None:
        rd_start = max(rd_start, RAM_BASE + 2 * MiB + image_size)
    if size:
        assert rd is not None and (rd.base, rd.size) == (rd_start, size)
    else:
        assert rd is None
    dtb = Region(m.dtb_address, len(m.dtb), "dtb")
    two_mib = 2 * MiB
    assert dtb.base == -(-(rd_start + size) // two_mib) * two_mib
    assert dtb.base % 8 == 0 and dtb.size <= two_mib
    assert ram.contains(dtb.base, dtb.size)
    assert dtb.base // two_mib == (dtb.end - 1) // two_mib
    assert m.image is not None
    for seg in m.image.segments:
        assert not dtb.overlaps(Region(seg.address, seg.memsize, "kernel"))
    assert rd is None or not dtb.overlaps(rd)
    assert not any(dtb.overlaps(r) for r in m.reserved)
    assert m.plan.x0 == dtb.base and m.plan.entry == m.image.entry


def test_the_initrd_and_the_dtb_are_in_guest_ram_after_boot(tmp_path: Path) -> None:
    """The bytes named in /chosen are the file's, and x0's DTB is the one in RAM."""
    data = random_file(tmp_path / "initrd", 3 * PAGE + 123).read_bytes()
    b = boot(SMP_HELLO, initrd=tmp_path / "initrd", traced=False)
    assert b.reason.kind is StopKind.SHUTDOWN, b.reason
    m = b.machine
    start, end = initrd_bounds(m.dtb)
    assert (start, end) == (RAM_BASE + 128 * MiB, RAM_BASE + 128 * MiB + len(data))
    assert m.memory.read(start, len(data)) == data
    assert m.memory.read(m.dtb_address, 4) == FDT_MAGIC.to_bytes(4, "big")
    assert m.memory.read(m.dtb_address, len(m.dtb)) == m.dtb


def test_an_initrd_too_big_for_ram_is_one_sentence_naming_mem(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd"
    with initrd.open("wb") as f:
        f.truncate(40 * MiB)  # from RAM + 32 MiB, past the end of 64 MiB
    line = one_sentence(pvkit("run", str(SMP_HELLO), "-m", "64", "--initrd", str(initrd)))
    assert "initrd" in line and "--mem" in line


def test_an_initrd_that_leaves_no_room_for_the_dtb_is_one_sentence(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd"
    with initrd.open("wb") as f:
        f.truncate(31 * MiB)  # ends at RAM + 63 MiB: the DTB's 2 MiB boundary is RAM's end
    line = one_sentence(pvkit("run", str(SMP_HELLO), "-m", "64", "--initrd", str(initrd)))
    assert "device tree" in line and "--mem" in line


# -- --dtb: the user's tree, patched ---------------------------------------------------
USER_DTS = """/dts-v1/;
/ {
    model = "user board";
    compatible = "linux,dummy-virt";
    #address-cells = <2>;
    #size-cells = <2>;
    memory@40000000 {
        device_type = "memory";
        reg = <0x0 0x40000000 0x0 0x1000000>;
    };
    memory@80000000 {
        device_type = "memory";
        reg = <0x0 0x80000000 0x0 0x1000000>;
    };
    chosen {
        bootargs = "from the file";
    };
    psci {
        compatible = "arm,psci-1.0", "arm,psci-0.2", "arm,psci";
        method = "hvc";
    };
};
"""


def test_a_user_dtb_keeps_its_nodes_and_gets_the_vms_memory_chosen_and_reservations(
    tmp_path: Path,
) -> None:
    """As QEMU's -dtb: the file is loaded, not replaced; only what the VM decides is
    written (RAM, bootargs, initrd, the service regions carved out of RAM)."""
    user = dtc_compile(tmp_path, USER_DTS)
    initrd = random_file(tmp_path / "initrd", 5000)
    b = boot(SMP_HELLO, dtb=user, bootargs="x", initrd=initrd, traced=False)
    assert b.reason.kind is StopKind.SHUTDOWN, (b.reason, b.console)
    assert "hello from cpu 0" in b.console
    m = b.machine
    text = dts(m.dtb)
    assert 'model = "user board";' in text
    assert 'method = "hvc";' in text
    assert text.count('device_type = "memory";') == 1  # both stale nodes gone
    assert prop(m.dtb, "/memory@40000000", "reg") == struct.pack(">QQ", RAM_BASE, 256 * MiB)
    assert prop(m.dtb, "/chosen", "bootargs") == b"x\0"
    assert initrd_bounds(m.dtb) == (RAM_BASE + 128 * MiB, RAM_BASE + 128 * MiB + 5000)
    (stolen,) = [r for r in m.reserved if r.name == "stolen-time"]
    node = f"/reserved-memory/stolen-time@{stolen.base:x}"
    assert prop(m.dtb, node, "reg") == struct.pack(">QQ", stolen.base, stolen.size)
    assert prop(m.dtb, node, "no-map") == b""
    assert m.memory.read(m.dtb_address, len(m.dtb)) == m.dtb


def test_a_user_dtb_keeps_its_own_bootargs_without_append(tmp_path: Path) -> None:
    """QEMU writes /chosen/bootargs only when -append gives one."""
    m = VirtArm64(VirtConfig(dtb=dtc_compile(tmp_path, USER_DTS)), SMP_HELLO)
    assert prop(m.dtb, "/chosen", "bootargs") == b"from the file\0"
    assert "/chosen/bootargs" not in m.plan.dtb_changes


def test_a_user_dtb_with_one_cell_addresses_gets_one_cell_regs(tmp_path: Path) -> None:
    """reg follows the root's #address-cells/#size-cells; RAM they cannot describe is an
    error, not a truncated number."""
    source = USER_DTS.replace("<2>", "<1>").replace("0x0 0x", "0x")
    user = dtc_compile(tmp_path, source)
    m = VirtArm64(VirtConfig(dtb=user), SMP_HELLO)
    assert prop(m.dtb, "/memory@40000000", "reg") == struct.pack(">II", RAM_BASE, 256 * MiB)
    r = pvkit("run", str(SMP_HELLO), "--dtb", str(user), "-m", "4G")
    assert "cannot describe" in one_sentence(r)


def test_the_cli_says_what_it_changed_in_a_user_dtb(tmp_path: Path) -> None:
    user = dtc_compile(tmp_path, USER_DTS)
    r = pvkit("run", str(SMP_HELLO), "-dtb", str(user), "-append", "x", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("pvkit: booting with")]
    assert line.startswith(f"pvkit: booting with {user}; pvkit set ")
    assert "memory 0x40000000+256 MiB" in line and "/chosen/bootargs" in line
    assert "/reserved-memory/stolen-time@" in line


def test_a_file_that_is_not_a_dtb_is_one_sentence(tmp_path: Path) -> None:
    for junk in (SMP_HELLO, random_file(tmp_path / "junk.dtb", 4096)):
        line = one_sentence(pvkit("run", str(SMP_HELLO), "--dtb", str(junk)))
        assert line.startswith(f"pvkit: {junk} is not a flattened device tree")
    missing = one_sentence(pvkit("run", str(SMP_HELLO), "--dtb", str(tmp_path / "nope")))
    assert "cannot read device tree" in missing


def test_a_dtb_whose_header_overstates_its_size_is_one_sentence(tmp_path: Path) -> None:
    """A file cut short, or crafted: the header's blocks lie beyond the file's end."""
    blob = bytearray(dtc_compile(tmp_path, USER_DTS).read_bytes())
    struct.pack_into(">I", blob, 4, 64 * MiB)  # totalsize
    struct.pack_into(">I", blob, 12, 32 * MiB)  # off_dt_strings
    bad = tmp_path / "bad.dtb"
    bad.write_bytes(bytes(blob))
    line = one_sentence(pvkit("run", str(SMP_HELLO), "--dtb", str(bad), "--timeout", "30"))
    assert str(bad) in line


# -- --dump-dtb ------------------------------------------------------------------------
def test_dump_dtb_writes_the_tree_the_guest_boots_with(tmp_path: Path) -> None:
    blob = pvkit_dtb(tmp_path, str(SMP_HELLO), "--smp", "2", "--append", "hello there")
    m = VirtArm64(VirtConfig(smp=2, bootargs="hello there"), SMP_HELLO)
    assert blob == m.dtb
    text = dts(blob)
    assert 'bootargs = "hello there";' in text and "cpu@1 {" in text
    nowhere = tmp_path / "no-such-dir" / "x.dtb"
    line = one_sentence(pvkit("run", str(SMP_HELLO), "--dump-dtb", str(nowhere)))
    assert line.startswith(f"pvkit: cannot write {nowhere}")


# -- QEMU's spellings --------------------------------------------------------------------
HELLO = str(SMP_HELLO)


@pytest.mark.parametrize(
    ("qemu_style", "long_style"),
    [
        ([HELLO, "-m", "128"], [HELLO, "--mem", "128M"]),
        ([HELLO, "-smp", "2"], [HELLO, "--smp", "2"]),
        (["-kernel", HELLO], [HELLO]),
        (["-kernel", HELLO], ["--kernel", HELLO]),
        ([HELLO, "-append", "a b"], [HELLO, "--append", "a b"]),
    ],
    ids=["-m", "-smp", "-kernel", "--kernel", "-append"],
)
def test_qemu_spellings_mean_the_same_vm(
    tmp_path: Path, qemu_style: list[str], long_style: list[str]
) -> None:
    """Same options, same DTB, same console."""
    a, b = tmp_path / "a.dtb", tmp_path / "b.dtb"
    ra = pvkit("run", *qemu_style, "--dump-dtb", str(a))
    rb = pvkit("run", *long_style, "--dump-dtb", str(b))
    assert ra.returncode == rb.returncode == 0, (ra.stderr, rb.stderr)
    assert a.read_bytes() == b.read_bytes()
    assert ra.stdout == rb.stdout


def test_kernel_given_twice_is_one_sentence() -> None:
    line = one_sentence(pvkit("run", str(SMP_HELLO), "--kernel", str(SMP_HELLO)))
    assert "not both" in line


def test_nothing_to_boot_is_one_sentence() -> None:
    assert "nothing to boot" in one_sentence(pvkit("run"))
    assert "nothing to boot" in one_sentence(pvkit("run", "-m", "128"))


def test_bios_with_a_kernel_or_initrd_is_one_sentence_about_fw_cfg(tmp_path: Path) -> None:
    fw = firmware(tmp_path, "b .")
    for extra in (["--kernel", str(SMP_HELLO)], ["--initrd", str(fw)]):
        assert "fw_cfg" in one_sentence(pvkit("run", "--bios", str(fw), *extra))


def test_bios_larger_than_a_flash_bank_is_one_sentence(tmp_path: Path) -> None:
    big = tmp_path / "big.fd"
    with big.open("wb") as f:
        f.truncate(64 * MiB + 1)
    line = one_sentence(pvkit("run", "--bios", str(big)))
    assert f"{64 * MiB + 1} bytes" in line and "64 MiB" in line
    empty = tmp_path / "empty.fd"
    empty.write_bytes(b"")
    assert "0 bytes" in one_sentence(pvkit("run", "--bios", str(empty)))


# -- --no-reboot -----------------------------------------------------------------------
RESETTER = UART + "mov w1, #'B'\nstrb w1, [x20]\nldr x0, =0x84000009\nhvc #0\nb ."


@pytest.mark.parametrize("spelling", ["--no-reboot", "-no-reboot"])
def test_no_reboot_ends_the_run_at_the_guests_reset(tmp_path: Path, spelling: str) -> None:
    """QEMU's -no-reboot: PSCI SYSTEM_RESET exits (status 0) instead of restarting."""
    guest = assemble(tmp_path, RESETTER)
    r = pvkit("run", str(guest), spelling, "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "B"
    assert "pvkit: reset" in r.stderr and "reset(s)" not in r.stderr


def test_without_no_reboot_a_reset_restarts_the_guest(tmp_path: Path) -> None:
    guest = assemble(tmp_path, RESETTER)
    r = pvkit("run", str(guest), "--timeout", "1")
    assert r.returncode == 4, r.stderr  # it resets until the timeout stops it
    assert set(r.stdout) == {"B"} and len(r.stdout) >= 2
    assert "reset(s)" in r.stderr


# -- --bios: firmware in flash -----------------------------------------------------------
FIRMWARE_SAYS = "fw: pc=0000000000000000 x0=0000000000000000 ram[0]=00000000d00dfeed"


def test_bios_runs_from_flash_at_0_with_the_dtb_at_the_ram_base(tmp_path: Path) -> None:
    """QEMU's virt with -bios: the vCPU starts at 0 (flash bank 0, executed in place) with
    x0 = 0, and the DTB sits at the start of RAM, where firmware built for virt looks."""
    fw = firmware(tmp_path)
    out = tmp_path / "fw.dtb"
    r = pvkit("run", "-bios", str(fw), "--dump-dtb", str(out), "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [FIRMWARE_SAYS]
    text = dts(out.read_bytes())
    assert "flash@0 {" in text and 'compatible = "cfi-flash";' in text
    assert "reg = <0x00 0x00 0x00 0x4000000 0x00 0x4000000 0x00 0x4000000>;" in text
    assert "linux,initrd" not in text
    m = VirtArm64(VirtConfig(bios=fw), None)
    assert (m.dtb_address, m.plan.entry, m.plan.x0) == (RAM_BASE, 0, 0)


# Firmware that copies a routine to RAM and calls it; the routine puts flash bank 0 into
# CFI query mode, reads the "Q" of the query table, puts the bank back into read-array
# mode and returns into the flash, which must run in place again.
FLASH_QUERY = (
    r"""
    ldr x20, =0x09000000
    adr x4, routine
    adr x5, routine_end
    ldr x6, =0x40100000
1:  ldr w7, [x4], #4
    str w7, [x6], #4
    cmp x4, x5
    b.lo 1b
    ldr x6, =0x40100000
    blr x6
    adr x1, msg_q
    bl puts
    mov x0, x3
    bl puthex
"""
    + OFF
    + ROUTINES
    + r"""
routine:
    mov x1, #0
    mov w2, #0x98
    str w2, [x1, #0x55 * 4]
    ldr w3, [x1, #0x10 * 4]
    mov w2, #0xff
    str w2, [x1]
    ret
routine_end:
msg_q: .asciz "fw: query Q="
"""
)
FLASH_QUERY_SAYS = "fw: query Q=0000000000510051"  # "Q" in each 16-bit device lane


def test_firmware_queries_its_flash_and_runs_from_it_again_in_read_array_mode(
    tmp_path: Path,
) -> None:
    """A write to the bank makes it a device (the query answers, not the array); back in
    read-array mode, the vCPU executes from it again."""
    fw = flat_binary(tmp_path, FLASH_QUERY, "query")
    r = pvkit("run", "-bios", str(fw), "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [FLASH_QUERY_SAYS]


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-aarch64 is not installed")
def test_the_firmware_sees_the_same_board_under_qemu(tmp_path: Path) -> None:
    """The same flash image under QEMU prints the same line: pc 0, x0 0, DTB at RAM."""
    fw = firmware(tmp_path)
    assert qemu_console("-m", "256M", "-bios", str(fw)) == [FIRMWARE_SAYS]
    flash = "reg = <0x00 0x00 0x00 0x4000000 0x00 0x4000000 0x00 0x4000000>;"
    assert flash in dts(qemu_dtb(tmp_path, "-m", "256M", "-bios", str(fw)))
