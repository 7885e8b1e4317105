# The x86-64 guest SDK for make. Include this file from a guest's Makefile, then build with
#     $(PVKIT_X86_64_CC) $(PVKIT_X86_64_CFLAGS) $(PVKIT_X86_64_LDFLAGS) -o guest.elf guest.c $(PVKIT_X86_64_SOURCES)
# The guest defines guest_main(boot), and guest_ap_main(cpu) if its other CPUs have work.
# guests/Makefile builds pvkit's own guests with it; `pvkit sdk --arch x86_64` prints the same.
PVKIT_X86_64_SDK := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
PVKIT_X86_64_CC ?= gcc
PVKIT_X86_64_CFLAGS := -O2 -std=gnu11 -m64 -ffreestanding -fno-builtin -nostdlib \
    -fno-stack-protector -fno-pic -fno-pie -mno-red-zone -mgeneral-regs-only -Wall -Wextra \
    -Werror -fno-asynchronous-unwind-tables -I$(PVKIT_X86_64_SDK)/include
PVKIT_X86_64_LDFLAGS := -nostdlib -static -no-pie -Wl,--build-id=none \
    -Wl,-T,$(PVKIT_X86_64_SDK)/link.ld -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
    -Wl,-z,max-page-size=0x1000
PVKIT_X86_64_SOURCES := $(addprefix $(PVKIT_X86_64_SDK)/src/,boot.S runtime.c)
# What a guest's build depends on besides its own files.
PVKIT_X86_64_DEPS := $(PVKIT_X86_64_SOURCES) $(PVKIT_X86_64_SDK)/link.ld \
    $(wildcard $(PVKIT_X86_64_SDK)/include/pvkit/*.h $(PVKIT_X86_64_SDK)/include/pvkit/gen/*.h)
