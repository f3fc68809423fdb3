/* SPDX-License-Identifier: Apache-2.0 */
#include "secmem.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

void secure_wipe(void *p, size_t n)
{
    if (p && n)
        OPENSSL_cleanse(p, n);
}

char *secure_memdup(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        return NULL;
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

void secure_free_str(char *s)
{
    if (s) {
        secure_wipe(s, strlen(s));
        free(s);
    }
}

void secure_free(void *p, size_t n)
{
    secure_wipe(p, n);
    free(p);
}
