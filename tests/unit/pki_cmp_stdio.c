/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test harness: one CMP request through server/pki's handler, as the
 * management server would run it, for the test with the real `openssl cmp`
 * client (test_pki_cmp_cli.py). The store is scripted by the arguments:
 *   pki_cmp_stdio CA_CRT CA_KEY TOKEN_KEY_HEX TOKEN_ID issue|pending|reject HOOK_LOG < req.der > resp.der
 * Every hook call is appended to HOOK_LOG, so the test sees what was asked.
 */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pki_srv.h"

static unsigned char token_key[64];
static long token_key_len;
static const char *token_id, *verdict, *log_path;

static void log_line(const char *what, const char *arg)
{
    FILE *f = fopen(log_path, "a");
    if (f) {
        fprintf(f, "%s %s\n", what, arg);
        fclose(f);
    }
}

static int h_token_secret(void *ctx, const char *id, char *secret, size_t cap, char *reason, size_t rcap)
{
    (void)ctx;
    log_line("token_secret", id);
    if (strcmp(id, token_id) != 0 || cap < 44) {
        snprintf(reason, rcap, "unknown enrolment token");
        return -1;
    }
    return pki_token_secret(token_key, (size_t)token_key_len, id, secret);
}

static int h_enrol(void *ctx, const char *id, const unsigned char *spki, size_t spki_len, pki_enrol_verdict *v,
                   char *device_id, size_t idcap, int *check_after, char *reason, size_t rcap)
{
    (void)ctx; (void)spki_len;
    log_line("enrol", spki ? "ir" : "poll");
    (void)id;
    if (strcmp(verdict, "issue") == 0) {
        *v = PKI_ENROL_ISSUE;
        snprintf(device_id, idcap, "dev-0123456789abcdef");
    } else if (strcmp(verdict, "pending") == 0) {
        *v = PKI_ENROL_PENDING;
        *check_after = 1;
    } else {
        *v = PKI_ENROL_REJECT;
        snprintf(reason, rcap, "enrolment rejected by the operator");
    }
    return 0;
}

static int h_issued(void *ctx, const char *id, const char *device_id, X509 *cert)
{
    (void)ctx; (void)id; (void)cert;
    log_line("issued", device_id);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s CA_CRT CA_KEY TOKEN_KEY_HEX TOKEN_ID issue|pending|reject HOOK_LOG\n", argv[0]);
        return 2;
    }
    unsigned char *k = OPENSSL_hexstr2buf(argv[3], &token_key_len);
    if (!k || token_key_len > (long)sizeof(token_key))
        return 2;
    memcpy(token_key, k, (size_t)token_key_len);
    OPENSSL_free(k);
    token_id = argv[4];
    verdict = argv[5];
    log_path = argv[6];
    char loc[4096], err[256];
    snprintf(loc, sizeof(loc), "file:%s", argv[2]);
    pki_signer *ca = NULL;
    if (pki_signer_open(&ca, argv[1], loc, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    static unsigned char req[1 << 20];
    size_t n = fread(req, 1, sizeof(req), stdin);
    const pki_cmp_hooks hooks = {.token_secret = h_token_secret, .enrol = h_enrol, .issued = h_issued};
    unsigned char *resp = NULL;
    size_t len = 0;
    int rc = pki_cmp_handle(ca, &hooks, NULL, 30, "m2mvpn test", req, n, &resp, &len);
    if (rc == 0)
        fwrite(resp, 1, len, stdout);
    OPENSSL_free(resp);
    pki_signer_free(ca);
    return rc == 0 ? 0 : 1;
}
