/* SPDX-License-Identifier: Apache-2.0 */
/* server/pki internals shared by its files (not part of the contract). */
#ifndef M2MVPN_PKI_LOCAL_H
#define M2MVPN_PKI_LOCAL_H

#include <openssl/evp.h>
#include "pki_srv.h"

EVP_PKEY *pki_signer_key(const pki_signer *s);   /* borrowed */
int pki_no_passphrase(char *buf, int size, int rwflag, void *u);

/* The last OpenSSL error's reason, never NULL. */
const char *pki_err_reason(void);

#endif
