/* SPDX-License-Identifier: Apache-2.0 */
/* `m2mvpn`: the command-line tool (docs/cli.md). */
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "service.h"

static const struct {
    const char *word;
    int (*run)(int argc, char **argv);
} commands[] = {
    { "run", cli_cmd_run },         { "start", cli_cmd_start },           { "stop", cli_cmd_stop },
    { "connect", cli_cmd_connect }, { "disconnect", cli_cmd_disconnect }, { "switch", cli_cmd_switch },
    { "login", cli_cmd_login },     { "pin", cli_cmd_pin },               { "status", cli_cmd_status },
    { "unload", cli_cmd_unload },   { "decommission", cli_cmd_decommission },   { "bind-key", cli_cmd_bind_key },
    { "keygen", cli_cmd_keygen },
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        cli_error("no command given (see 'm2mvpn --help')");
        return CLI_EXIT_USAGE;
    }
    const char *word = argv[1];
    if (!strcmp(word, "--help") || !strcmp(word, "-h") || !strcmp(word, "help")) {
        cli_usage();
        return CLI_EXIT_OK;
    }
    if (!strcmp(word, "--version")) {
        printf("m2mvpn %s\n", m2mvpn_version());
        return CLI_EXIT_OK;
    }
    /* The service (foreground or detached) runs with its malloc tuned. */
    if (!strcmp(word, "run") || !strcmp(word, "start"))
        service_tune_malloc(argv);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(word, commands[i].word))
            return commands[i].run(argc - 1, argv + 1);
    cli_error("unknown command '%s' (see 'm2mvpn --help')", word);
    return CLI_EXIT_USAGE;
}
