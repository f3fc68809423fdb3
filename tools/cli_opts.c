/* SPDX-License-Identifier: Apache-2.0 */
/* Command-line parsing, usage and the one-line error format. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "ctl_client.h"

void cli_error(const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* One line, whatever the text held (a peer's message, a path). */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "m2mvpn: %s\n", msg);
}

void cli_usage(void)
{
    fputs("usage:\n"
          "  m2mvpn run --profile FILE [--control SOCK] [--state-dir DIR] [--control-group GROUP]\n"
          "             [--log stderr|syslog] [-v]     (SIGHUP reloads the profile file)\n"
          "  m2mvpn start --profile FILE [--control SOCK] [--state-dir DIR] [--control-group GROUP]\n"
          "             [--log stderr|syslog] [-v]\n"
          "  m2mvpn stop [--control SOCK] [--state-dir DIR]\n"
          "  m2mvpn connect [NAME] [--control SOCK]\n"
          "  m2mvpn disconnect [--remove] [--control SOCK]  (--remove: unload the profile, kill switch too)\n"
          "  m2mvpn switch NAME [--control SOCK]\n"
          "  m2mvpn unload NAME [--control SOCK]     (also removes its kill switch)\n"
          "  m2mvpn decommission [--control SOCK]   (revoke this device's certificate, remove its key)\n"
          "  m2mvpn login --user U [--control SOCK]   (password from stdin or prompt)\n"
          "  m2mvpn pin [--control SOCK]              (PIN from stdin or prompt)\n"
          "  m2mvpn status [--json] [--control SOCK]\n"
          "  m2mvpn bind-key --in KEY.pem --out KEY.bound [--sources machine-id,dmi-uuid,mac:IF,file:/PATH]\n"
          "  m2mvpn keygen --provider file|pkcs11|tpm --csr FILE --subject /CN=... [--rsa]\n"
          "         file:   --out KEY.pem [--pin-stdin]   (PIN: passphrase for the key file)\n"
          "         pkcs11: --module MODULE --uri pkcs11:token=T;object=LABEL --pin-stdin\n"
          "         tpm:    [--tcti TCTI] --out KEY.tss2.pem | --handle 0x81xxxxxx [--pin-stdin]\n"
          "  m2mvpn --help | --version\n"
          "defaults: --control " CTL_DEFAULT_SOCKET ", --state-dir " CTL_DEFAULT_STATE_DIR "\n",
          stdout);
}

int cli_parse(int argc, char **argv, unsigned allowed, int min_pos, int max_pos, cli_opts *o)
{
    static const struct option longopts[] = {
        { "control", required_argument, NULL, 'c' },
        { "state-dir", required_argument, NULL, 'd' },
        { "profile", required_argument, NULL, 'p' },
        { "user", required_argument, NULL, 'u' },
        { "verbose", no_argument, NULL, 'v' },
        { "json", no_argument, NULL, 'j' },
        { "remove", no_argument, NULL, 'r' },
        { "log", required_argument, NULL, 'l' },
        { "control-group", required_argument, NULL, 'g' },
        { NULL, 0, NULL, 0 },
    };
    static const struct { int ch; unsigned bit; } bits[] = {
        { 'c', CLI_OPT_CONTROL }, { 'd', CLI_OPT_STATE_DIR }, { 'p', CLI_OPT_PROFILE },
        { 'u', CLI_OPT_USER },    { 'v', CLI_OPT_VERBOSE },   { 'j', CLI_OPT_JSON },
        { 'r', CLI_OPT_REMOVE },  { 'l', CLI_OPT_LOG },       { 'g', CLI_OPT_GROUP },
    };
    const char *cmd = argv[0];
    memset(o, 0, sizeof(*o));
    o->control = CTL_DEFAULT_SOCKET;
    o->state_dir = CTL_DEFAULT_STATE_DIR;
    opterr = 0;
    optind = 1;
    for (;;) {
        int ch = getopt_long(argc, argv, ":v", longopts, NULL);
        if (ch == -1)
            break;
        if (ch == '?') {
            cli_error("%s: unknown option '%s' (see 'm2mvpn --help')", cmd, argv[optind - 1]);
            return -1;
        }
        if (ch == ':') {
            cli_error("%s: option '%s' needs a value", cmd, argv[optind - 1]);
            return -1;
        }
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++)
            if (bits[i].ch == ch)
                bit = bits[i].bit;
        if (!(allowed & bit)) {
            cli_error("%s: option '%s' does not apply here (see 'm2mvpn --help')", cmd, argv[optind - 1]);
            return -1;
        }
        switch (ch) {
        case 'c': o->control = optarg; break;
        case 'd': o->state_dir = optarg; break;
        case 'p': o->profile = optarg; break;
        case 'u': o->user = optarg; break;
        case 'v': o->verbose = 1; break;
        case 'j': o->json = 1; break;
        case 'r': o->remove = 1; break;
        case 'l': o->log = optarg; break;
        case 'g': o->control_group = optarg; break;
        }
    }
    o->pos = argv + optind;
    o->n_pos = argc - optind;
    if (o->n_pos < min_pos || o->n_pos > max_pos) {
        if (o->n_pos > max_pos)
            cli_error("%s: unexpected argument '%s' (see 'm2mvpn --help')", cmd, o->pos[max_pos]);
        else
            cli_error("%s: missing argument (see 'm2mvpn --help')", cmd);
        return -1;
    }
    if (o->log && strcmp(o->log, "stderr") && strcmp(o->log, "syslog")) {
        cli_error("%s: --log takes 'stderr' or 'syslog', not '%s'", cmd, o->log);
        return -1;
    }
    if (o->control_group && !*o->control_group) {
        cli_error("%s: --control-group needs a group name", cmd);
        return -1;
    }
    if (!*o->control || !*o->state_dir) {
        cli_error("%s: empty path given", cmd);
        return -1;
    }
    return 0;
}
