/* SPDX-License-Identifier: Apache-2.0 */
/* Machine-bound keys (lib/cred/cred_machine.c): bound and opened on "this"
 * machine, refused on "another" (a changed fingerprint source), tampered
 * files and source lists refused. Sources are pointed at files (file:PATH),
 * the way tests and factories provision a fingerprint. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <m2mvpn/m2mvpn.h>

#include "core/secmem.h"
#include "cred/cred.h"
#include "crypto/pki_internal.h"
#include "data/cred/test_pki.h"

static const uint8_t MSG[] = "signed octets";

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void write_bytes(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* Bind `key_name` of the test PKI to file:<dir>/machine-id (the test's own:
 * a fresh system's /etc/machine-id may be empty) and file:<dir>/serial
 * into key.bound. */
static char *bind_to_serial(const char *key_name, const char *serial, char *sources, size_t cap)
{
    write_text(path_of("machine-id"), "0123456789abcdef0123456789abcdef\n");
    write_text(path_of("serial"), serial);
    snprintf(sources, cap, "file:%s,file:%s", path_of("machine-id"), path_of("serial"));
    uint8_t *key, *bound;
    size_t key_len, bound_len;
    char err[256] = "";
    ck_assert_int_eq(pki_read_file(path_of(key_name), &key, &key_len, err, sizeof err), 0);
    ck_assert_msg(cred_machine_bind(key, key_len, sources, &bound, &bound_len, err, sizeof err) == 0, "%s", err);
    /* The key is not in the file in clear. */
    ck_assert_ptr_null(memmem(bound, bound_len, "PRIVATE KEY", 11));
    secure_free(key, key_len);
    write_bytes(path_of("key.bound"), bound, bound_len);
    free(bound);
    return path_of("key.bound");
}

START_TEST(bound_key_opens_here_and_signs)
{
    build_pki();
    char sources[300], err[512] = "";
    const char *bound = bind_to_serial("p256.key", "SN-4711\n", sources, sizeof sources);
    cred_provider *p = NULL;
    ck_assert_msg(cred_machine_open(path_of("p256.pem"), bound, NULL, NULL, 0, &p, err, sizeof err) == 0, "%s", err);
    ck_assert(!cred_pin_needed(p));
    uint8_t sig[PKI_AUTH_MAX];
    size_t len = 0;
    ck_assert_msg(cred_sign_auth(p, PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_ECDSA_SHA256, MSG, sizeof MSG, sig,
                                 sizeof sig, &len, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_gt(len, 0);
    cred_free(p);
    /* The profile may require exactly these sources. */
    ck_assert_int_eq(cred_machine_open(path_of("p256.pem"), bound, sources, NULL, 0, &p, err, sizeof err), 0);
    cred_free(p);
    ck_assert_int_eq(cred_machine_open(path_of("p256.pem"), bound, "machine-id", NULL, 0, &p, err, sizeof err),
                     M2MVPN_E_CERT);
    ck_assert_ptr_nonnull(strstr(err, "the profile requires machine-id"));
    /* Trailing white space of a source does not count. */
    write_text(path_of("serial"), "SN-4711  \n\n");
    ck_assert_int_eq(cred_machine_open(path_of("p256.pem"), bound, NULL, NULL, 0, &p, err, sizeof err), 0);
    cred_free(p);
}
END_TEST

START_TEST(bound_key_refused_on_another_machine)
{
    build_pki();
    char sources[300], err[512] = "";
    const char *bound = bind_to_serial("p256.key", "SN-4711\n", sources, sizeof sources);
    write_text(path_of("serial"), "SN-4712\n"); /* "another machine" */
    cred_provider *p = NULL;
    ck_assert_int_eq(cred_machine_open(path_of("p256.pem"), bound, NULL, NULL, 0, &p, err, sizeof err),
                     M2MVPN_E_CERT);
    ck_assert_ptr_null(p);
    ck_assert_ptr_nonnull(strstr(err, "is bound to another machine"));
    ck_assert_ptr_nonnull(strstr(err, "machine-id,file:")); /* the sources named */
    /* A source that is gone: said so, not "another machine". */
    remove(path_of("serial"));
    ck_assert_int_eq(cred_machine_open(path_of("p256.pem"), bound, NULL, NULL, 0, &p, err, sizeof err),
                     M2MVPN_E_CERT);
    ck_assert_ptr_nonnull(strstr(err, "unavailable"));
}
END_TEST

START_TEST(tampered_files_are_refused)
{
    build_pki();
    char sources[300], err[512] = "";
    const char *bound = bind_to_serial("p256.key", "SN-1", sources, sizeof sources);
    uint8_t *b;
    size_t n;
    ck_assert_int_eq(pki_read_file(bound, &b, &n, err, sizeof err), 0);
    uint8_t *key;
    size_t key_len;
    /* Untouched: opens. Then each part changed in turn: refused. */
    ck_assert_int_eq(cred_machine_unbind(b, n, "k", NULL, &key, &key_len, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr((char *)key, "PRIVATE KEY"));
    secure_free(key, key_len + 1);
    static const size_t at[] = { 0, 8, 9, 10, 12, 44, 60 };
    for (size_t i = 0; i < sizeof at / sizeof at[0] + 2; i++) {
        size_t pos = i < sizeof at / sizeof at[0] ? at[i] : i == sizeof at / sizeof at[0] ? n - 20 : n - 1;
        b[pos] ^= 0x01;
        key = NULL;
        ck_assert_msg(cred_machine_unbind(b, n, "k", NULL, &key, &key_len, err, sizeof err) == M2MVPN_E_CERT,
                      "byte %zu changed, still opens", pos);
        ck_assert_ptr_null(key);
        b[pos] ^= 0x01;
    }
    /* The source list is authenticated: pointing it elsewhere fails. */
    ck_assert_int_eq(cred_machine_unbind(b, n - 1, "k", NULL, &key, &key_len, err, sizeof err), M2MVPN_E_CERT);
    ck_assert_int_eq(cred_machine_unbind(b, 20, "k", NULL, &key, &key_len, err, sizeof err), M2MVPN_E_CERT);
    free(b);
}
END_TEST

START_TEST(encrypted_key_still_needs_its_pin)
{
    build_pki();
    char sources[300], err[512] = "";
    const char *bound = bind_to_serial("p256-enc.key", "SN-9", sources, sizeof sources);
    cred_provider *p = NULL;
    ck_assert_int_eq(cred_machine_open(path_of("p256.pem"), bound, NULL, NULL, 0, &p, err, sizeof err), 0);
    ck_assert(cred_pin_needed(p));
    ck_assert_int_eq(cred_set_pin(p, "0000", 4, err, sizeof err), M2MVPN_E_PIN);
    ck_assert_int_eq(cred_set_pin(p, "1234", 4, err, sizeof err), 0);
    ck_assert(!cred_pin_needed(p));
    cred_free(p);
}
END_TEST

START_TEST(sources_are_checked)
{
    char err[256];
    ck_assert_int_eq(cred_machine_check_sources("machine-id,dmi-uuid,mac:eth0,file:/etc/serial", err, sizeof err), 0);
    static const char *const bad[] = { "", "serial", "mac:", "mac:../x", "file:rel", "machine-id,", ",machine-id",
                                       "mac:eth0/x" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(cred_machine_check_sources(bad[i], err, sizeof err) == M2MVPN_E_INVAL, "'%s' accepted", bad[i]);
    /* Binding through the public call: bad arguments and a non-key file. */
    ck_assert_int_eq(m2mvpn_bind_key(NULL, "/tmp/x", NULL, err, sizeof err), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_bind_key("/nonexistent/key.pem", "/tmp/x", "machine-id", err, sizeof err), M2MVPN_E_IO);
    write_text(path_of("not-a-key"), "not a key\n");
    ck_assert_int_eq(m2mvpn_bind_key(path_of("not-a-key"), "/tmp/x", "nonsense", err, sizeof err), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_bind_key(path_of("not-a-key"), "/tmp/x", "machine-id", err, sizeof err), M2MVPN_E_CERT);
    ck_assert_ptr_nonnull(strstr(err, "no PEM private key"));
}
END_TEST

static Suite *machine_suite(void)
{
    Suite *s = suite_create("cred_machine");
    TCase *tc = tcase_create("machine");
    tcase_add_test(tc, bound_key_opens_here_and_signs);
    tcase_add_test(tc, bound_key_refused_on_another_machine);
    tcase_add_test(tc, tampered_files_are_refused);
    tcase_add_test(tc, encrypted_key_still_needs_its_pin);
    tcase_add_test(tc, sources_are_checked);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(machine_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    destroy_pki();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
