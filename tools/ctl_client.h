/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Client side of the control socket: one connection per request (see
 * control.h for the line format, docs/cli.md for the protocol).
 */
#ifndef M2MVPN_TOOLS_CTL_CLIENT_H
#define M2MVPN_TOOLS_CTL_CLIENT_H

#include <stddef.h>

/* Default path of the control socket and of the service's state folder. */
#define CTL_DEFAULT_SOCKET "/run/m2mvpn/control.sock"
#define CTL_DEFAULT_STATE_DIR "/run/m2mvpn"

/**
 * Send one encoded request line (ending in "\n") to the service at sock_path
 * and read its response line. On success returns 0 and *resp is a new
 * NUL-terminated string without the "\n" (free() it). On failure returns -1,
 * *resp is untouched and err holds one line such as
 * "cannot reach the service at /run/m2mvpn/control.sock: No such file or directory".
 * Before anything is sent, the listening process must be root or our own
 * user (SO_PEERCRED); otherwise nothing is sent and -1 is returned.
 * The caller wipes `line` if it holds a secret; this function keeps no copy.
 */
int ctl_client_call(const char *sock_path, const char *line, size_t len, int timeout_ms,
                    char **resp, char *err, size_t err_len);

/** 1 if something accepts connections at sock_path, 0 if not. */
int ctl_client_reachable(const char *sock_path);

#endif
