/* Asynchronous page faults: discovery and the call wrappers (see pvkit/apf.h). */
#include <pvkit/apf.h>

/* One sub-function of the call; pv_vendor_call issues it only if bit 126 was advertised. */
static struct smccc_res apf_call(const struct pv_env *env, uint32_t sub, uint64_t a2, uint64_t a3)
{
    return pv_vendor_call(env, APF_FUNC, sub, a2, a3);
}

/* W0 of a result as the signed SMCCC status. */
static int64_t status(struct smccc_res r) { return (int32_t)r.a0; }

const char *apf_probe(const struct pv_env *env, struct apf_info *info)
{
    *info = (struct apf_info){0};
    if (env->conduit == CONDUIT_NONE)
        return "no hypervisor conduit";
    if (env->smccc_version < SMCCC_VERSION_1_1)
        return "SMCCC below 1.1";
    if (env->hypervisor == HYP_UNKNOWN)
        return "unknown vendor UID";
    if (!pv_vendor_has(env, APF_FUNC_NUMBER))
        return "not advertised";

    struct smccc_res r = apf_call(env, APF_VERSION, 0, 0);
    if (status(r) != 0 || (r.a1 >> 24) != 0 || APF_VERSION_MAJOR(r.a1) != 1)
        return "unsupported version";
    info->version = r.a1;
    r = apf_call(env, APF_SLOTS, 0, 0);
    if (status(r) != 0 || (uint32_t)r.a1 == 0)
        return "no slots";
    info->slots = (uint32_t)r.a1;
    r = apf_call(env, APF_IRQ, 0, 0);
    if (status(r) != 0 || (uint32_t)r.a1 < 16 || (uint32_t)r.a1 > 31)
        return "no PPI";
    info->irq = (uint32_t)r.a1;
    return 0;
}

/* ENABLE's control word travels as W2 (low half) and W3 (high half). */
static int64_t enable_word(const struct pv_env *env, uint64_t control)
{
    return status(apf_call(env, APF_ENABLE, control & 0xffffffffu, control >> 32));
}

int64_t apf_enable(const struct pv_env *env, volatile struct apf_block *block, uint32_t flags)
{
    return enable_word(env, (uint64_t)(uintptr_t)block | flags);
}

int64_t apf_disable(const struct pv_env *env) { return enable_word(env, 0); }

int64_t apf_irq_ack(const struct pv_env *env) { return status(apf_call(env, APF_IRQ_ACK, 0, 0)); }
