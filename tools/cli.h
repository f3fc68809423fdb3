/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The commands of `m2mvpn` (docs/cli.md). Each takes the arguments after
 * the command word (argv[0] is the command word itself) and returns the
 * process exit status:
 */
#ifndef M2MVPN_TOOLS_CLI_H
#define M2MVPN_TOOLS_CLI_H

#include <stddef.h>

enum cli_exit {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILED = 1,      /* refused by the service/library, or failed */
    CLI_EXIT_USAGE = 2,       /* bad command line */
    CLI_EXIT_UNREACHABLE = 3, /* no service, or it did not answer properly */
};

/** Print the usage text to stdout. */
void cli_usage(void);

int cli_cmd_run(int argc, char **argv);
int cli_cmd_start(int argc, char **argv);
int cli_cmd_stop(int argc, char **argv);
int cli_cmd_connect(int argc, char **argv);
int cli_cmd_disconnect(int argc, char **argv);
int cli_cmd_switch(int argc, char **argv);
int cli_cmd_unload(int argc, char **argv);
int cli_cmd_decommission(int argc, char **argv);
int cli_cmd_login(int argc, char **argv);
int cli_cmd_pin(int argc, char **argv);
int cli_cmd_status(int argc, char **argv);
int cli_cmd_bind_key(int argc, char **argv);
int cli_cmd_keygen(int argc, char **argv); /* cli_keygen.c */

/** Print "m2mvpn: <text>" as the one error line on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Options a command may accept (bit set for cli_parse). */
enum cli_opt_bits {
    CLI_OPT_CONTROL = 1 << 0,   /* --control SOCK */
    CLI_OPT_STATE_DIR = 1 << 1, /* --state-dir DIR */
    CLI_OPT_PROFILE = 1 << 2,   /* --profile FILE */
    CLI_OPT_USER = 1 << 3,      /* --user U */
    CLI_OPT_VERBOSE = 1 << 4,   /* -v, --verbose */
    CLI_OPT_JSON = 1 << 5,      /* --json */
    CLI_OPT_REMOVE = 1 << 6,    /* --remove (disconnect) */
    CLI_OPT_LOG = 1 << 7,       /* --log stderr|syslog (run, start) */
    CLI_OPT_GROUP = 1 << 8,     /* --control-group GROUP (run, start) */
};

typedef struct cli_opts {
    const char *control;   /* default CTL_DEFAULT_SOCKET */
    const char *state_dir; /* default CTL_DEFAULT_STATE_DIR */
    const char *profile, *user;
    const char *log;           /* NULL (stderr), "stderr" or "syslog" */
    const char *control_group; /* NULL: none */
    int verbose, json, remove;
    char **pos;            /* positional arguments */
    int n_pos;
} cli_opts;

/**
 * Parse a command's arguments: only the options in `allowed`, and between
 * min_pos and max_pos positional arguments. On a bad command line prints one
 * line ("m2mvpn: status: unknown option '--x'") and returns -1.
 */
int cli_parse(int argc, char **argv, unsigned allowed, int min_pos, int max_pos, cli_opts *o);

struct json_object;
/**
 * Send one request (command `cmd`, arguments `args`) to the service at
 * o->control and check its answer. Returns CLI_EXIT_OK and, if `status` is
 * not NULL, the parsed status object in *status (release with
 * json_object_put). Otherwise prints one error line ("<what> refused: ...",
 * "cannot reach the service at ...") and returns the exit status.
 * The encoded request is wiped after sending: args may be secrets.
 */
int cli_call(const cli_opts *o, const char *what, int cmd, const char *const *args, size_t argc,
             struct json_object **status);

#endif
