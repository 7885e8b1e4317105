/* Stolen-time discovery and registration (see pvkit/pvtime.h). */
#include <pvkit/pvtime.h>

int pvtime_available(const struct pv_env *env)
{
    if (env->conduit == CONDUIT_NONE || env->smccc_version < SMCCC_VERSION_1_1)
        return 0;
    struct smccc_res r = smccc_call(env->conduit, SMCCC_ARCH_FEATURES, PV_TIME_FEATURES, 0, 0);
    if ((int64_t)r.a0 != 0)
        return 0;
    r = smccc_call(env->conduit, PV_TIME_FEATURES, PV_TIME_ST, 0, 0);
    return (int64_t)r.a0 == 0;
}

volatile struct pvtime_record *pvtime_register(const struct pv_env *env, int64_t *err)
{
    struct smccc_res r = smccc_call(env->conduit, PV_TIME_ST, 0, 0, 0);
    if ((int64_t)r.a0 < 0 || (r.a0 & 63)) {
        *err = (int64_t)r.a0;
        return 0;
    }
    *err = 0;
    return (volatile struct pvtime_record *)(uintptr_t)r.a0; /* MMU off: IPA == VA */
}
