/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the hardware credential parsers that read files and
 * profile strings (lib/cred): TSS2 PEM key files and their DER
 * (tss2_pem.h), and PKCS#11 URIs (p11_uri.h). The first byte picks the
 * parser. A key that parses must encode again to the same DER.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cred/p11_uri.h"
#include "cred/tss2_pem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t which = data[0] % 3;
    data++;
    size--;
    char err[256];
    tss2_key_blob *k = malloc(sizeof *k);
    if (!k)
        return 0;
    if (which == 0) {
        (void)tss2_key_parse_pem(data, size, k, err, sizeof err);
    } else if (which == 1) {
        if (tss2_key_parse_der(data, size, k, err, sizeof err) == 0) {
            uint8_t out[2 * TSS2_BLOB_MAX + 64];
            size_t len = 0;
            if (tss2_key_encode_der(k, out, sizeof out, &len) != 0)
                abort();
            /* Accepted DER is canonical except for an absent/FALSE emptyAuth. */
            tss2_key_blob again;
            if (tss2_key_parse_der(out, len, &again, err, sizeof err) != 0 || again.parent != k->parent ||
                again.pub_len != k->pub_len || again.priv_len != k->priv_len ||
                memcmp(again.pub, k->pub, k->pub_len) != 0 || memcmp(again.priv, k->priv, k->priv_len) != 0)
                abort();
        }
    } else {
        char *text = malloc(size + 1);
        if (text) {
            memcpy(text, data, size);
            text[size] = '\0';
            p11_uri u;
            (void)p11_uri_parse(text, &u, err, sizeof err);
            free(text);
        }
    }
    free(k);
    return 0;
}
