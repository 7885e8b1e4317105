/* pvpanic: tell the host about a panic, a crash-kernel hand-off or a shutdown, as Linux's
 * drivers/misc/pvpanic does with the MMIO flavour of the device.
 *
 * The device is found from the device tree, never by probing: the node compatible with
 * "qemu,pvpanic-mmio" (Documentation/devicetree/bindings/misc/qemu,pvpanic-mmio.yaml) and
 * its first reg entry. Without such a node the guest says so and uses 0x09060000, where
 * QEMU-style arm virt boards put it. Like Linux, it reads the register once at probe: the
 * events the host supports (QEMU docs/specs/pvpanic.rst), and afterwards writes one byte
 * per event, only for events in that set.
 *
 * Bootargs: `event=panic` writes PANICKED (the host should stop the VM; if it does not,
 * the guest halts as a panicked kernel would); `event=crash` writes CRASH_LOADED, as a
 * kernel handing over to kdump does, prints "crash loaded reported" and carries on to an
 * ordinary shutdown; `event=shutdown` (the default) writes SHUTDOWN, as Linux's power-off
 * handler does, then powers off through PSCI SYSTEM_OFF. */
#include <pvkit/console.h>
#include <pvkit/discovery.h>
#include <pvkit/fdt.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

#define PVPANIC_DEFAULT_BASE 0x09060000UL
#define PVPANIC_PANICKED (1u << 0)
#define PVPANIC_CRASH_LOADED (1u << 1)
#define PVPANIC_SHUTDOWN (1u << 2)
#define PVPANIC_KNOWN (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN)

enum action { ACT_SHUTDOWN, ACT_CRASH, ACT_PANIC, ACT_UNKNOWN };

static struct pv_env env;
static uintptr_t base;
static uint32_t capability; /* read once at probe, like the Linux driver */

static inline uint8_t read8(uintptr_t addr) { return *(volatile uint8_t *)addr; }
static inline void write8(uintptr_t addr, uint8_t v) { *(volatile uint8_t *)addr = v; }

static void probe(const void *fdt)
{
    int parent = -1;
    int node = fdt_find_compatible(fdt, "qemu,pvpanic-mmio", &parent);
    uint64_t addr = 0, size = 0;
    if (node >= 0 && parent >= 0 && fdt_reg(fdt, parent, node, 0, &addr, &size) == 0 && size) {
        base = (uintptr_t)addr;
        kprintf("pvpanic: qemu,pvpanic-mmio at 0x%lx (%lu bytes)\n", addr, size);
    } else {
        base = PVPANIC_DEFAULT_BASE;
        kprintf("pvpanic: no qemu,pvpanic-mmio node in the device tree; using 0x%lx\n",
                (uint64_t)base);
    }
    capability = read8(base) & PVPANIC_KNOWN;
    kprintf("pvpanic: supported events 0x%x:%s%s%s%s\n", capability,
            capability & PVPANIC_PANICKED ? " panicked" : "",
            capability & PVPANIC_CRASH_LOADED ? " crash-loaded" : "",
            capability & PVPANIC_SHUTDOWN ? " shutdown" : "", capability ? "" : " none");
}

/* Writes `event` if the host offered it; returns whether it was sent. */
static int send(uint32_t event, const char *name)
{
    if (!(capability & event)) {
        kprintf("pvpanic: the host does not offer %s; not sent\n", name);
        return 0;
    }
    write8(base, (uint8_t)event);
    return 1;
}

/* Where the value of the whole word `key=...` in `args` starts, or 0. */
static const char *bootarg_value(const char *args, const char *key)
{
    for (const char *p = args; p && *p; p++) {
        if (p != args && p[-1] != ' ')
            continue;
        int n = 0;
        while (key[n] && p[n] == key[n])
            n++;
        if (!key[n] && p[n] == '=')
            return p + n + 1;
    }
    return 0;
}

/* 1 when the value at `v` is exactly `word`. */
static int value_is(const char *v, const char *word)
{
    int i = 0;
    while (word[i] && v[i] == word[i])
        i++;
    return !word[i] && (v[i] == 0 || v[i] == ' ');
}

static enum action chosen_action(const char *args)
{
    const char *v = bootarg_value(args, "event");
    if (!v || value_is(v, "shutdown"))
        return ACT_SHUTDOWN;
    if (value_is(v, "panic"))
        return ACT_PANIC;
    if (value_is(v, "crash"))
        return ACT_CRASH;
    return ACT_UNKNOWN;
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    probe(fdt);
    enum action act = chosen_action(fdt_bootargs(fdt));
    if (act == ACT_UNKNOWN) {
        kprintf("pvpanic: unknown event= in bootargs (use panic, crash or shutdown); "
                "powering off without an event\n");
        psci_system_off(&env);
        halt();
    }
    if (act == ACT_PANIC) {
        kprintf("pvpanic: reporting PANICKED\n");
        send(PVPANIC_PANICKED, "PANICKED");
        kprintf("pvpanic: still running after PANICKED; halting like a panicked kernel\n");
        halt();
    }
    if (act == ACT_CRASH) {
        if (send(PVPANIC_CRASH_LOADED, "CRASH_LOADED"))
            kprintf("pvpanic: crash loaded reported\n");
        kprintf("pvpanic: still running, as a kdump kernel would; now shutting down\n");
    }
    kprintf("pvpanic: reporting SHUTDOWN\n");
    send(PVPANIC_SHUTDOWN, "SHUTDOWN");
    kprintf("pvpanic: powering off through PSCI\n");
    psci_system_off(&env);
    halt();
}
