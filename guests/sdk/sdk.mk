# The arm64 guest SDK for make. Include this file from a guest's Makefile, then build with
#     $(PVKIT_ARM64_CC) $(PVKIT_ARM64_CFLAGS) $(PVKIT_ARM64_LDFLAGS) -o guest.elf guest.c $(PVKIT_ARM64_SOURCES)
#     $(PVKIT_ARM64_OBJCOPY) -O binary guest.elf guest.Image
# The guest defines guest_main(fdt), and guest_secondary(context) if it starts other CPUs.
# guests/Makefile builds pvkit's own guests with it; `pvkit sdk` prints the same variables.
PVKIT_ARM64_SDK := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
PVKIT_ARM64_CROSS ?= aarch64-linux-gnu-
PVKIT_ARM64_CC := $(PVKIT_ARM64_CROSS)gcc
PVKIT_ARM64_OBJCOPY := $(PVKIT_ARM64_CROSS)objcopy
PVKIT_ARM64_CFLAGS := -O2 -std=gnu11 -ffreestanding -fno-builtin -nostdlib -fno-stack-protector \
    -fno-pic -fno-pie -mgeneral-regs-only -mstrict-align -Wall -Wextra -Werror \
    -I$(PVKIT_ARM64_SDK)/include -I$(PVKIT_ARM64_SDK)/src
PVKIT_ARM64_LDFLAGS := -nostdlib -static -no-pie -Wl,--build-id=none \
    -Wl,-T,$(PVKIT_ARM64_SDK)/link.ld -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments
PVKIT_ARM64_SOURCES := $(addprefix $(PVKIT_ARM64_SDK)/src/,start.S vectors.S console.c fdt.c \
    smccc.c psci.c discovery.c string.c pvtime.c exception.c gic.c timer.c mmu.c)
# Optional: $(PVKIT_ARM64_SDK)/src/apf.c, asynchronous page faults (pvkit/apf.h).
# What a guest's build depends on besides its own files.
PVKIT_ARM64_DEPS := $(PVKIT_ARM64_SOURCES) $(PVKIT_ARM64_SDK)/link.ld \
    $(wildcard $(PVKIT_ARM64_SDK)/include/pvkit/*.h $(PVKIT_ARM64_SDK)/include/pvkit/gen/*.h \
    $(PVKIT_ARM64_SDK)/src/*.h)
