/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the device's poll answer parser (lib/mgmt,
 * mgmt_poll_parse): the JSON body of GET /api/v1/device/poll as a server
 * (or whoever holds its certificate) could send it. Every accepted answer
 * must satisfy what the engine relies on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mgmt/mgmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    mgmt_poll_answer a;
    if (mgmt_poll_parse((const char *)data, size, &a, err, sizeof(err)) == 0) {
        if (a.poll_s < 1 || a.n > MGMT_POLL_MAX_DEPS)
            abort();
        for (size_t i = 0; i < a.n; i++)
            if (a.deps[i].id < 1 || strncmp(a.deps[i].href, "/api/v1/device/deployments/", 27) != 0)
                abort();
    }
    return 0;
}
