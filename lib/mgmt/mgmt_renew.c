/* SPDX-License-Identifier: Apache-2.0 */
/* Certificate renewal, the schedule (issue 15): when to send the CMP KUR
 * and how long to wait after a failed one. Pure functions of the
 * certificate's validity and a random draw, so they are tested alone. */
#include "mgmt.h"

/* The renewal point is at 2/3 of the lifetime, moved by up to ±1/18 of it
 * (so it stays between 11/18 and 13/18: at least 5/18 of the lifetime is
 * left for retries). `rnd` is a uniform draw in [0, 1). */
int64_t mgmt_renew_at(int64_t not_before, int64_t not_after, double rnd)
{
    if (not_after <= not_before)
        return not_before; /* nonsense validity: renew at once */
    int64_t life = not_after - not_before;
    if (rnd < 0.0)
        rnd = 0.0;
    if (rnd >= 1.0)
        rnd = 0.999999;
    int64_t base = not_before + life * 2 / 3;
    int64_t spread = life / 18;
    int64_t jitter = (int64_t)((rnd * 2.0 - 1.0) * (double)spread);
    return base + jitter;
}

/* After `failures` failed attempts (>= 1): 60 s doubling, at most 1 h; and
 * never past the point where half the time left before expiry is used, so
 * several more attempts fit before the certificate expires (at least 5 s). */
int64_t mgmt_renew_retry_s(unsigned failures, int64_t now, int64_t not_after)
{
    int64_t d = MGMT_RENEW_RETRY_MIN_S;
    for (unsigned i = 1; i < failures && d < MGMT_RENEW_RETRY_MAX_S; i++)
        d *= 2;
    if (d > MGMT_RENEW_RETRY_MAX_S)
        d = MGMT_RENEW_RETRY_MAX_S;
    int64_t left = not_after - now;
    if (left / 2 < d)
        d = left / 2;
    if (d < 5)
        d = 5;
    return d;
}
