/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Inside lib/cred only: how the hardware providers (cred_pkcs11.c,
 * cred_tpm.c) treat an error code of the token or the TPM. Pure functions on
 * the numbers of the standards (PKCS#11 CKR_*, TPM 2.0 Part 2 §6.6 TPM_RC_*),
 * built without libp11 or tss2, so the tables are unit-tested everywhere.
 *
 * The rule (DESIGN.md §8): a PIN is never presented twice by the library for
 * one user action. Whatever may have reached the PIN check and failed is
 * final; only what certainly did not count an attempt is retried.
 */
#ifndef M2MVPN_CRED_HW_CLASS_H
#define M2MVPN_CRED_HW_CLASS_H

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    CRED_HW_PIN,      /* wrong PIN, or a login/auth that may have counted: E_PIN, not retried */
    CRED_HW_REFUSED,  /* the device refused the operation: E_CERT, not retried */
    CRED_HW_RETRY,    /* transient (busy, out of sessions or memory): E_IO, retried with back-off */
    CRED_HW_GONE,     /* device absent or not answering: E_IO, reopened and retried */
    CRED_HW_LOCKOUT,  /* TPM dictionary-attack lockout, nothing tried: E_IO, retried later */
} cred_hw_class;

/** A PKCS#11 return value (not CKR_OK). `login`: of C_Login, where only a
 *  token absent before the call (TOKEN_NOT_PRESENT, DEVICE_REMOVED) is
 *  retried; any other failure may have decremented the PIN counter. */
cred_hw_class cred_hw_ckr_class(unsigned long ckr, bool login);

/** A TSS2 return code (not success). `auth_sent`: the command carried the
 *  authValue; a transport failure then may have been counted by the TPM
 *  (the answer is lost): final. Warnings (TPM_RC_WARN class: the command was
 *  not executed) are retried; TPM_RC_LOCKOUT is LOCKOUT; AUTH_FAIL and
 *  BAD_AUTH are PIN. */
cred_hw_class cred_hw_tpm_class(uint32_t rc, bool auth_sent);

/** The M2MVPN_E_* code of a class. */
int cred_hw_class_error(cred_hw_class k);

#endif
