/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Secrets: wiped with a call the compiler may not elide, never logged.
 * Every password, PIN, PSK and key copy in the library goes through these.
 */
#ifndef M2MVPN_CORE_SECMEM_H
#define M2MVPN_CORE_SECMEM_H

#include <stddef.h>

/* Overwrite n bytes with zeros; not optimised away. NULL/0 is fine. */
void secure_wipe(void *p, size_t n);
/* Copy of n bytes plus a NUL terminator, for secrets; NULL on ENOMEM. */
char *secure_memdup(const void *p, size_t n);
/* Wipe a NUL-terminated secret (its whole length) and free it. NULL is fine. */
void secure_free_str(char *s);
/* Wipe n bytes and free. NULL is fine. */
void secure_free(void *p, size_t n);

#endif
