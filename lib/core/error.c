/* SPDX-License-Identifier: Apache-2.0 */
#include "error.h"

#include <m2mvpn/m2mvpn.h>

const char *core_strerror(int err)
{
    switch (err) {
    case M2MVPN_OK:
        return "success";
#define XX(name, value, msg) case M2MVPN_E_##name: return msg;
        M2MVPN_ERROR_MAP(XX)
#undef XX
    default:
        return "unknown error";
    }
}

const char *core_error_name(int err)
{
    switch (err) {
    case M2MVPN_OK:
        return "";
#define XX(name, value, msg) case M2MVPN_E_##name: return #name;
        M2MVPN_ERROR_MAP(XX)
#undef XX
    default:
        return "UNKNOWN";
    }
}
