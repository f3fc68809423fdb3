/* SPDX-License-Identifier: Apache-2.0 */
/* Seeds a management server's store with N enrolled devices for the
 * bench/mgmt-poll load test, without N CMP round trips: each device gets its
 * own P-256 key and a certificate issued here with the device CA key, shaped
 * as the CMP endpoint issues them (CN = O = as server/pki/cmp.c, id derived
 * from the key the same way), and goes through the store API exactly as a
 * CMP enrolment does (auto-approve token -> store_enrol -> store_issued).
 *
 *   mgmt_seed DATABASE CA_CERT CA_KEY GROUP COUNT OUTDIR [ORG] [DAYS]
 *
 * Writes OUTDIR/<device id>.pem (certificate then key) and OUTDIR/devices.txt
 * (one PEM path a line). A bench tool: never use it on a production store. */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pki_local.h"
#include "store.h"

static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, v3, nid, value);
    int ok = e && X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok;
}

/* dev-<16 hex of SHA-256 of the SubjectPublicKeyInfo>, as the CMP route names devices */
static int device_id(EVP_PKEY *k, char id[STORE_ID_MAX])
{
    unsigned char *spki = NULL, h[32];
    unsigned int hl = 0;
    int n = i2d_PUBKEY(k, &spki);
    int ok = n > 0 && EVP_Digest(spki, (size_t)n, h, &hl, EVP_sha256(), NULL) == 1;
    OPENSSL_free(spki);
    if (ok)
        snprintf(id, STORE_ID_MAX, "dev-%02x%02x%02x%02x%02x%02x%02x%02x", h[0], h[1], h[2], h[3], h[4], h[5], h[6],
                 h[7]);
    return ok ? 0 : -1;
}

static X509 *issue(pki_signer *ca, EVP_PKEY *pub, const char *id, const char *org, int days, char serial[80])
{
    X509 *cac = pki_signer_cert(ca), *x = X509_new();
    unsigned char rnd[16];
    BIGNUM *bn = NULL;
    char san[80], *hex = NULL;
    if (!x || RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto fail;
    rnd[0] |= 0x01;
    if (!(bn = BN_bin2bn(rnd, sizeof(rnd), NULL)) || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
        goto fail;
    X509_NAME *subj = X509_get_subject_name(x);
    if (!X509_set_version(x, X509_VERSION_3) || !X509_set_issuer_name(x, X509_get_subject_name(cac)) ||
        !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)id, -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(subj, "O", MBSTRING_UTF8, (const unsigned char *)org, -1, -1, 0) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -300) || !X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) ||
        !X509_set_pubkey(x, pub))
        goto fail;
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, cac, x, NULL, NULL, 0);
    snprintf(san, sizeof(san), "DNS:%s", id);
    if (!add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(x, &v3, NID_key_usage, "critical,digitalSignature") ||
        !add_ext(x, &v3, NID_ext_key_usage, "clientAuth") || !add_ext(x, &v3, NID_subject_alt_name, san) ||
        !add_ext(x, &v3, NID_subject_key_identifier, "hash") ||
        !add_ext(x, &v3, NID_authority_key_identifier, "keyid:always") ||
        !X509_sign(x, pki_signer_key(ca), EVP_sha256()))
        goto fail;
    /* the serial as the server records it: lowercase hex of the integer */
    if (!(hex = BN_bn2hex(bn)) || strlen(hex) >= 80)
        goto fail;
    for (size_t i = 0; hex[i]; i++)
        serial[i] = (char)(hex[i] >= 'A' && hex[i] <= 'F' ? hex[i] - 'A' + 'a' : hex[i]);
    serial[strlen(hex)] = 0;
    OPENSSL_free(hex);
    BN_free(bn);
    return x;
fail:
    OPENSSL_free(hex);
    BN_free(bn);
    X509_free(x);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 9) {
        fprintf(stderr, "usage: mgmt_seed DATABASE CA_CERT CA_KEY GROUP COUNT OUTDIR [ORG] [DAYS]\n");
        return 2;
    }
    const char *db = argv[1], *group = argv[4], *outdir = argv[6];
    const char *org = argc > 7 ? argv[7] : "m2mvpn";
    int count = atoi(argv[5]), days = argc > 8 ? atoi(argv[8]) : 30;
    if (count < 1 || count > 100000 || days < 1) {
        fprintf(stderr, "mgmt_seed: COUNT 1..100000 and DAYS >= 1\n");
        return 2;
    }
    char err[512], keyloc[4200];
    snprintf(keyloc, sizeof(keyloc), "file:%s", argv[3]);
    pki_signer *ca = NULL;
    store *st = NULL;
    if (pki_signer_open(&ca, argv[2], keyloc, err, sizeof(err)) < 0) {
        fprintf(stderr, "mgmt_seed: device CA: %s\n", err);
        return 1;
    }
    if (store_open(&st, db, err, sizeof(err)) < 0) {
        fprintf(stderr, "mgmt_seed: database: %s\n", err);
        pki_signer_free(ca);
        return 1;
    }
    char listpath[4200];
    snprintf(listpath, sizeof(listpath), "%s/devices.txt", outdir);
    FILE *list = fopen(listpath, "w");
    if (!list) {
        perror(listpath);
        return 1;
    }
    /* tokens in batches (each batch one transaction), auto-approve as a fleet rollout would use */
    long long now = (long long)time(NULL);
    int rc = 0, done = 0;
    enum { BATCH = 500 };
    char (*ids)[17] = calloc(BATCH, sizeof(*ids));
    const char **idp = calloc(BATCH, sizeof(*idp));
    if (!ids || !idp)
        return 1;
    while (done < count && rc == 0) {
        int n = count - done < BATCH ? count - done : BATCH;
        for (int i = 0; i < n; i++) {
            if (pki_token_id_new(ids[i]) < 0)
                return 1;
            idp[i] = ids[i];
        }
        if ((rc = store_token_create(st, idp, (size_t)n, group, now + 3600, 1, err, sizeof(err)))) {
            fprintf(stderr, "mgmt_seed: tokens: %s\n", err);
            break;
        }
        for (int i = 0; i < n && rc == 0; i++) {
            EVP_PKEY *k = EVP_EC_gen("P-256");
            char id[STORE_ID_MAX], serial[80], path[4300];
            store_device_state state = STORE_DEV_APPROVED;
            X509 *x = NULL;
            struct tm tm;
            if (!k || device_id(k, id) < 0 || !(x = issue(ca, k, id, org, days, serial)) ||
                ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) {
                fprintf(stderr, "mgmt_seed: key or certificate generation failed\n");
                rc = -1;
            } else if ((rc = store_enrol(st, ids[i], id, now, &state, err, sizeof(err))) ||
                       (rc = state == STORE_DEV_APPROVED ? 0 : STORE_REFUSED) ||
                       (rc = store_issued(st, ids[i], id, serial, (long long)timegm(&tm), now, err, sizeof(err)))) {
                fprintf(stderr, "mgmt_seed: device %s: %s\n", id, state == STORE_DEV_APPROVED ? err : "not approved");
            } else {
                snprintf(path, sizeof(path), "%s/%s.pem", outdir, id);
                FILE *f = fopen(path, "w");
                if (!f || PEM_write_X509(f, x) != 1 || PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1 ||
                    fclose(f) != 0) {
                    perror(path);
                    rc = -1;
                } else {
                    fprintf(list, "%s\n", path);
                }
            }
            X509_free(x);
            EVP_PKEY_free(k);
        }
        done += n;
    }
    free(ids);
    free(idp);
    if (fclose(list) != 0)
        rc = -1;
    if (rc == 0)
        printf("mgmt_seed: %d devices enrolled in the %s store (certificates from the device CA key)\n", count,
               store_engine(st));
    store_close(st);
    pki_signer_free(ca);
    return rc ? 1 : 0;
}
