/* SPDX-License-Identifier: Apache-2.0 */
/* `m2mvpn bind-key --in KEY.pem --out KEY.bound [--sources LIST]` (docs/cli.md):
 * a machine-bound copy of a private key, through m2mvpn_bind_key(). Runs
 * locally; needs no service. */
#include <m2mvpn/m2mvpn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

/* Whether one source of the list (p, len) can be read by root only:
 * dmi-uuid (mode 0400 in sysfs), or a file:PATH owned by root that neither
 * its group nor others may read. machine-id and MAC addresses are readable
 * by every user. */
static bool root_only(const char *p, size_t len)
{
    if (len == 8 && !memcmp(p, "dmi-uuid", 8))
        return true;
    if (len <= 5 || memcmp(p, "file:", 5) != 0 || len - 5 >= 4096)
        return false;
    char path[4096];
    snprintf(path, sizeof(path), "%.*s", (int)(len - 5), p + 5);
    struct stat st;
    return stat(path, &st) == 0 && st.st_uid == 0 && !(st.st_mode & (S_IRGRP | S_IROTH));
}

static bool any_root_only(const char *sources)
{
    for (const char *p = sources; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (root_only(p, len))
            return true;
        p += len + (comma ? 1 : 0);
    }
    return false;
}

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
    if (sources && !any_root_only(sources))
        fprintf(stderr, "m2mvpn: warning: bind-key: no source in '%s' is readable by root only "
                "(machine-id and MAC addresses are readable by every user): a local user who can "
                "read %s can derive its key; add dmi-uuid or file:PATH of a root-only file\n", sources, out);
    return CLI_EXIT_OK;
}
