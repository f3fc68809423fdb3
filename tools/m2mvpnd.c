/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `m2mvpnd`: the service binary for service managers. The same engine as
 * `m2mvpn run`, with the same options:
 *   m2mvpnd --profile FILE [--control SOCK] [--state-dir DIR] [--control-group GROUP]
 *           [--log stderr|syslog] [-v]
 */
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "service.h"

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        puts("usage: m2mvpnd --profile FILE [--control SOCK] [--state-dir DIR] [--control-group GROUP]\n"
             "               [--log stderr|syslog] [-v]\n"
             "SIGTERM/SIGINT: disconnect and stop; SIGHUP: reload the profile file (see m2mvpnd(8))");
        return CLI_EXIT_OK;
    }
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("m2mvpnd %s\n", m2mvpn_version());
        return CLI_EXIT_OK;
    }
    service_tune_malloc(argv);
    /* argv[0] is the command word in messages ("m2mvpn: m2mvpnd: ..."),
     * whatever path the service manager started us by. */
    argv[0] = (char *)"m2mvpnd";
    return cli_cmd_run(argc, argv);
}
