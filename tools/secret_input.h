/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Reading a password or PIN for `m2mvpn login` / `m2mvpn pin`: from a
 * terminal with a prompt and echo switched off, else one line from standard
 * input (scripts: `echo "$PIN" | m2mvpn pin`). Bytes go straight from read()
 * into the caller's buffer, never through stdio buffers that are not wiped.
 */
#ifndef M2MVPN_TOOLS_SECRET_INPUT_H
#define M2MVPN_TOOLS_SECRET_INPUT_H

#include <stddef.h>

/**
 * Read one line (without "\n" or "\r\n") into buf[cap] as a NUL-terminated
 * string of at most cap-1 bytes. `what` names the secret in prompts and
 * errors ("password", "PIN"). Returns the length (>= 1), or -1 with one line
 * in err: nothing entered, too long, or a read error. On failure buf is wiped.
 */
int secret_read(const char *what, char *buf, size_t cap, char *err, size_t err_len);

#endif
