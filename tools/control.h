/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The control protocol between `m2mvpn` (client) and the running service
 * (`m2mvpn run` / `m2mvpnd`), specified in docs/cli.md:
 *
 *   one connection = one request line + one response line
 *   request:  WORD [ARG [ARG]] "\n"   args separated by one space, each
 *             percent-encoded (every byte outside 0x21..0x7e, and '%', as %XX)
 *   response: one JSON object "\n": {"ok":true,...} or
 *             {"ok":false,"code":-9,"error":"NOPROFILE","message":"..."}
 *
 * This file holds only the pure codec (no sockets, no library handle), so it
 * can be unit-tested and reasoned about on its own. Requests may carry
 * secrets (login, pin): a parsed ctl_request must be wiped with
 * ctl_request_wipe() and an encoded line with explicit_bzero().
 */
#ifndef M2MVPN_TOOLS_CONTROL_H
#define M2MVPN_TOOLS_CONTROL_H

#include <stddef.h>

/* Longest request line, without its "\n". Longer lines are refused. */
#define CTL_MAX_LINE 4096
/* Longest decoded argument (bytes, without the NUL). Secrets in the library
 * are at most 256 bytes; names at most 255. */
#define CTL_MAX_ARG 1024
#define CTL_MAX_ARGS 2
/* Longest response line a client accepts. */
#define CTL_MAX_RESPONSE 65536

typedef enum ctl_cmd {
    CTL_CMD_STATUS,      /* no args */
    CTL_CMD_CONNECT,     /* [profile name] */
    CTL_CMD_DISCONNECT,  /* no args */
    CTL_CMD_SWITCH,      /* profile name */
    CTL_CMD_LOGIN,       /* user, password (secret) */
    CTL_CMD_PIN,         /* pin (secret) */
    CTL_CMD_STOP,        /* no args: disconnect and end the service */
    CTL_CMD_UNLOAD,      /* profile name */
    CTL_CMD_DECOMMISSION, /* no args: revoke the device certificate, remove the credential */
    CTL_CMD_COUNT_
} ctl_cmd;

/** The request word of a command ("status", ...); "unknown" if out of range. */
const char *ctl_cmd_name(ctl_cmd cmd);

typedef struct ctl_request {
    ctl_cmd cmd;
    size_t argc;
    char args[CTL_MAX_ARGS][CTL_MAX_ARG + 1]; /* decoded, NUL-terminated */
    size_t arg_len[CTL_MAX_ARGS];
} ctl_request;

/**
 * Parse one request line of `len` bytes (no "\n"; a trailing "\r" is not
 * accepted either). On success fills *req and returns 0. On failure returns -1
 * with a one-line reason in err (which never quotes an argument, since it may
 * be a secret); *req may be partly written and must still be wiped.
 */
int ctl_request_parse(const char *line, size_t len, ctl_request *req,
                      char *err, size_t err_len);

/**
 * Encode a request line (with the final "\n" and a NUL) into out[cap].
 * Arguments are NUL-terminated strings. Returns the line length (without the
 * NUL), or -1 if a count or length is out of bounds or it does not fit.
 */
int ctl_request_format(ctl_cmd cmd, const char *const *args, size_t argc,
                       char *out, size_t cap);

/** Wipe a request (it may hold a password or PIN). */
void ctl_request_wipe(ctl_request *req);

#endif
