/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the device's CMP answer handling (lib/mgmt): the
 * input is the DER PKIMessage the "server" answers to every request of an
 * enrolment (IR, then pollReq or certConf), run through the same client
 * code and checks as a real enrolment (mgmt_cmp_check_answer).
 */
#include <stdint.h>
#include <stdlib.h>

#include "mgmt/mgmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    mgmt_cmp_check_answer(data, size, err, sizeof(err));
    return 0;
}
