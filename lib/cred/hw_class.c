/* SPDX-License-Identifier: Apache-2.0 */
#include "hw_class.h"

#include <m2mvpn/m2mvpn.h>

/* PKCS#11 v2.40 return values (pkcs11t.h); cred_pkcs11.c checks them
 * against the header it builds with. */
enum {
    P11_HOST_MEMORY = 0x2, P11_SLOT_ID_INVALID = 0x3, P11_GENERAL_ERROR = 0x5,
    P11_FUNCTION_FAILED = 0x6, P11_DEVICE_ERROR = 0x30, P11_DEVICE_MEMORY = 0x31,
    P11_DEVICE_REMOVED = 0x32, P11_KEY_HANDLE_INVALID = 0x60, P11_OBJECT_HANDLE_INVALID = 0x82,
    P11_PIN_INCORRECT = 0xa0, P11_PIN_INVALID = 0xa1, P11_PIN_LEN_RANGE = 0xa2,
    P11_PIN_EXPIRED = 0xa3, P11_PIN_LOCKED = 0xa4, P11_SESSION_CLOSED = 0xb0,
    P11_SESSION_COUNT = 0xb1, P11_SESSION_HANDLE_INVALID = 0xb3, P11_TOKEN_NOT_PRESENT = 0xe0,
    P11_TOKEN_NOT_RECOGNIZED = 0xe1, P11_USER_NOT_LOGGED_IN = 0x101,
    P11_CRYPTOKI_NOT_INITIALIZED = 0x190,
};

cred_hw_class cred_hw_ckr_class(unsigned long ckr, bool login)
{
    switch (ckr) {
    case P11_PIN_INCORRECT:
    case P11_PIN_INVALID:
    case P11_PIN_LEN_RANGE:
    case P11_PIN_EXPIRED:
    case P11_PIN_LOCKED:
        return CRED_HW_PIN;
    case P11_TOKEN_NOT_PRESENT:
    case P11_DEVICE_REMOVED:
        return CRED_HW_GONE;
    default:
        break;
    }
    if (login)
        return CRED_HW_PIN; /* it may have reached the PIN check: never again by itself */
    switch (ckr) {
    case P11_DEVICE_ERROR:
    case P11_SESSION_CLOSED:
    case P11_SESSION_HANDLE_INVALID:
    case P11_CRYPTOKI_NOT_INITIALIZED:
    case P11_TOKEN_NOT_RECOGNIZED:
    case P11_USER_NOT_LOGGED_IN:
    case P11_KEY_HANDLE_INVALID:
    case P11_OBJECT_HANDLE_INVALID:
    case P11_GENERAL_ERROR:
    case P11_SLOT_ID_INVALID:
        return CRED_HW_GONE;
    case P11_SESSION_COUNT:
    case P11_DEVICE_MEMORY:
    case P11_HOST_MEMORY:
    case P11_FUNCTION_FAILED:
        return CRED_HW_RETRY;
    default:
        return CRED_HW_REFUSED;
    }
}

/* TSS2 / TPM 2.0 Part 2 §6.6 response codes. */
#define RC_LAYER_MASK  0x00ff0000u /* 0: from the TPM itself */
#define RC_VER1        0x100u
#define RC_FMT1        0x080u
#define RC_WARN_BIT    0x800u      /* format 0, severity: warning */
#define RC_INITIALIZE  0x100u
#define RC_LOCKOUT     0x921u
#define RC_AUTH_FAIL   0x08eu      /* format 1 */
#define RC_BAD_AUTH    0x0a2u      /* format 1 */

cred_hw_class cred_hw_tpm_class(uint32_t rc, bool auth_sent)
{
    if (rc & RC_LAYER_MASK) /* TCTI, resource manager, ESYS: the TPM did not answer */
        return auth_sent ? CRED_HW_PIN : CRED_HW_GONE;
    if (rc & RC_FMT1) {
        uint32_t code = rc & (RC_FMT1 | 0x3f); /* without handle/parameter/session number */
        return code == RC_AUTH_FAIL || code == RC_BAD_AUTH ? CRED_HW_PIN : CRED_HW_REFUSED;
    }
    if (!(rc & RC_VER1))
        return CRED_HW_REFUSED; /* TPM 1.2 code */
    uint32_t code = rc & 0xfffu;
    if (code == RC_LOCKOUT)
        return CRED_HW_LOCKOUT;
    if (code & RC_WARN_BIT)
        return CRED_HW_RETRY; /* not executed: OBJECT_MEMORY, NV_RATE, RETRY, YIELDED, ... */
    if (code == RC_INITIALIZE)
        return CRED_HW_GONE; /* restarted and not started up: not executed either */
    return CRED_HW_REFUSED;
}

int cred_hw_class_error(cred_hw_class k)
{
    switch (k) {
    case CRED_HW_PIN:
        return M2MVPN_E_PIN;
    case CRED_HW_REFUSED:
        return M2MVPN_E_CERT;
    case CRED_HW_RETRY:
    case CRED_HW_GONE:
    case CRED_HW_LOCKOUT:
    default:
        return M2MVPN_E_IO;
    }
}
