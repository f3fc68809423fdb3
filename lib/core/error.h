/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Texts and names of the M2MVPN_E_* codes, from the one table in the public
 * header (M2MVPN_ERROR_MAP), for every module: m2mvpn_strerror() and
 * m2mvpn_error_name() of the API are these, so lower modules need not call
 * up into lib/api.
 */
#ifndef M2MVPN_CORE_ERROR_H
#define M2MVPN_CORE_ERROR_H

/* "success" for 0, the table's message, or "unknown error". */
const char *core_strerror(int err);
/* "" for 0, the symbolic name without prefix ("AUTH_LOCAL"), or "UNKNOWN". */
const char *core_error_name(int err);

#endif
