/* vendor-call: find one vendor hypercall the safe way, then call it (pvkit's docs/library.md).
 *
 * The call is MYHV_ADD of myhv.py (pvkit's copy: guests/examples/myhv.py); its ID and bitmap
 * bit come from myhv.h, which `pvkit header myhv:MyService -o myhv.h` generates from that
 * Python definition. Discovery is the SDK's (pv_discover): the device tree names the conduit,
 * then the PSCI and SMCCC versions, the vendor Call UID and the features bitmap. Only when
 * the bitmap has MYHV_ADD's bit does the guest issue the call; elsewhere it issues none.
 * `pvkit sdk new DIR` starts a guest of your own from this file. It runs on one CPU and so
 * defines no guest_secondary: the SDK's default parks any other CPU. */
#include <pvkit/console.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

#include "myhv.h"

static struct pv_env env;

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    kprintf("vendor-call: hypervisor %s\n", pv_hypervisor_name(env.hypervisor));
    if (!pv_vendor_has(&env, MYHV_ADD_FEATURE_BIT)) {
        kprintf("vendor-call: MYHV_ADD is not offered: not calling it\n");
    } else {
        for (uint64_t i = 1; i <= 3; i++) {
            struct smccc_res r = pv_vendor_call(&env, MYHV_ADD, 40, i, 0);
            kprintf("vendor-call: MYHV_ADD(40, %lu) = %lu (status %ld, call %lu)\n", i, r.a1,
                    (int64_t)r.a0, r.a2);
        }
    }
    psci_system_off(&env); /* without PSCI this returns NOT_SUPPORTED, and the CPU halts */
}
