/* SPDX-License-Identifier: Apache-2.0 */
/* `m2mvpn bind-key --in KEY.pem --out KEY.bound [--sources LIST]` (docs/cli.md):
 * a machine-bound copy of a private key, through m2mvpn_bind_key(). Runs
 * locally; needs no service. */
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cli_cmd_bind_key(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *sources = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = !strcmp(argv[i], "--in") ? &in : !strcmp(argv[i], "--out") ? &out
                          : !strcmp(argv[i], "--sources") ? &sources : NULL;
        if (!slot) {
            cli_error("bind-key: unknown argument '%s'", argv[i]);
            return CLI_EXIT_USAGE;
        }
        if (i + 1 >= argc || *slot) {
            cli_error("bind-key: %s needs one value (given once)", argv[i]);
            return CLI_EXIT_USAGE;
        }
        *slot = argv[++i];
    }
    if (!in || !out) {
        cli_error("bind-key: --in KEY.pem and --out FILE are required");
        return CLI_EXIT_USAGE;
    }
    char err[512];
    int r = m2mvpn_bind_key(in, out, sources, err, sizeof(err));
    if (r < 0) {
        cli_error("bind-key: %s", err[0] ? err : m2mvpn_strerror(r));
        return r == M2MVPN_E_INVAL ? CLI_EXIT_USAGE : CLI_EXIT_FAILED;
    }
    printf("%s: bound to this machine (%s)\n", out, sources ? sources : "machine-id,dmi-uuid");
    return CLI_EXIT_OK;
}
