/* SPDX-License-Identifier: Apache-2.0 */
/* m2mvpn-mgmtd's pure parts: the config file (keys, types, relative paths)
 * and the per-device profile made from a group template. */
#include <check.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mgmtd.h"

static char dir[64], err[512];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/m2m-mgmtd-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

#define SHA "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define BASE "\"tls_cert\": \"s.pem\", \"tls_key\": \"/abs/s.key\", \"device_ca_cert\": \"ca.pem\"," \
    " \"device_ca_key\": \"file:ca.key\", \"bundle_signer_cert\": \"sig.pem\", \"bundle_signer_key\": \"pkcs11:x\"," \
    " \"token_key\": \"tk\", \"admin_token_sha256\": \"" SHA "\""

static int load(const char *json, mgmtd_config *c)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/c.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(json, f);
    fclose(f);
    return mgmtd_config_load(c, path, err, sizeof(err));
}

START_TEST(config_good)
{
    mgmtd_config c;
    ck_assert_int_eq(load("{\"listen\": \"[::1]:8443\", " BASE ", \"database\": \"sqlite:m.db\", \"cert_days\": 30}", &c), 0);
    ck_assert_str_eq(c.listen_host, "::1");
    ck_assert_int_eq(c.listen_port, 8443);
    char want[128];
    snprintf(want, sizeof(want), "%s/s.pem", dir);
    ck_assert_str_eq(c.tls_cert, want);
    ck_assert_str_eq(c.tls_key, "/abs/s.key");
    snprintf(want, sizeof(want), "file:%s/ca.key", dir);
    ck_assert_str_eq(c.device_ca_key, want);
    ck_assert_str_eq(c.bundle_signer_key, "pkcs11:x");   /* other locations kept as they are */
    snprintf(want, sizeof(want), "sqlite:%s/m.db", dir);
    ck_assert_str_eq(c.database, want);
    ck_assert_int_eq(c.cert_days, 30);
    ck_assert_str_eq(c.org, "m2mvpn");
    ck_assert_int_eq(c.admin_token_sha256[1], 0x11);
    mgmtd_config_free(&c);
    ck_assert_int_eq(load("{\"listen\": \"127.0.0.1:0\", " BASE ", \"database\": \"postgresql://u@h/db\"}", &c), 0);
    ck_assert_str_eq(c.database, "postgresql://u@h/db");
    ck_assert_int_eq(c.cert_days, 365);
    mgmtd_config_free(&c);
}
END_TEST

START_TEST(config_bad)
{
    static const struct {
        const char *json, *word;
    } cases[] = {
        {"{\"listen\": \"127.0.0.1\", " BASE ", \"database\": \"sqlite:x\"}", "\"listen\""},
        {"{\"listen\": \"[::1:80\", " BASE ", \"database\": \"sqlite:x\"}", "\"listen\""},
        {"{\"listen\": \"h:70000\", " BASE ", \"database\": \"sqlite:x\"}", "\"listen\""},
        {"{\"listen\": \"h:1\", " BASE "}", "missing key \"database\""},
        {"{\"listen\": \"h:1\", " BASE ", \"database\": 5}", "\"database\""},
        {"{\"listen\": \"h:1\", " BASE ", \"database\": \"sqlite:x\", \"cert_days\": 0}", "\"cert_days\""},
        {"{\"listen\": \"h:1\", " BASE ", \"database\": \"sqlite:x\", \"extra\": 1}", "unknown key \"extra\""},
        {"[1]", "not a JSON object"},
        {"{\"listen\": ", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mgmtd_config c;
        ck_assert_int_eq(load(cases[i].json, &c), -1);
        ck_assert_msg(strstr(err, cases[i].word), "case %zu: %s", i, err);
        ck_assert_ptr_null(c.tls_cert);     /* nothing left behind */
    }
    mgmtd_config c;
    char bad[1024];
    snprintf(bad, sizeof(bad), "{\"listen\": \"h:1\", %s, \"database\": \"sqlite:x\"}", BASE);
    char *p = strstr(bad, SHA);
    p[10] = 'g';
    ck_assert_int_eq(load(bad, &c), -1);
    ck_assert_msg(strstr(err, "\"admin_token_sha256\""), "%s", err);
    ck_assert_int_eq(mgmtd_config_load(&c, "/nonexistent/c.json", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "/nonexistent/c.json"), "%s", err);
}
END_TEST

START_TEST(profile_from_template)
{
    const char *tpl = "{\"version\": 1, \"name\": \"n-${device_id}-${device_id}\", \"local_id\": \"${device_id}\","
                      " \"gateways\": [{\"host\": \"198.51.100.1\"}], \"tags\": [\"${device_id}\", 3],"
                      " \"auth\": {\"method\": \"psk\", \"psk\": \"x\"}, \"${device_id}\": \"key kept\","
                      " \"nested\": {\"deep\": [{\"v\": \"a${device_id}b\"}]}, \"dollar\": \"${device\"}";
    char *out = mgmtd_profile_for(tpl, "dev-0123456789abcdef", err, sizeof(err));
    ck_assert_ptr_nonnull(out);
    json_object *o = json_tokener_parse(out), *v, *w;
    ck_assert_ptr_nonnull(o);
    ck_assert(json_object_object_get_ex(o, "name", &v));
    ck_assert_str_eq(json_object_get_string(v), "n-dev-0123456789abcdef-dev-0123456789abcdef");
    ck_assert(json_object_object_get_ex(o, "local_id", &v));
    ck_assert_str_eq(json_object_get_string(v), "dev-0123456789abcdef");
    ck_assert(json_object_object_get_ex(o, "tags", &v));
    ck_assert_str_eq(json_object_get_string(json_object_array_get_idx(v, 0)), "dev-0123456789abcdef");
    ck_assert_int_eq(json_object_get_int(json_object_array_get_idx(v, 1)), 3);
    ck_assert(json_object_object_get_ex(o, "nested", &v) && json_object_object_get_ex(v, "deep", &v));
    ck_assert(json_object_object_get_ex(json_object_array_get_idx(v, 0), "v", &w));
    ck_assert_str_eq(json_object_get_string(w), "adev-0123456789abcdefb");
    ck_assert(json_object_object_get_ex(o, "${device_id}", &v));   /* keys are not values */
    ck_assert(json_object_object_get_ex(o, "dollar", &v));
    ck_assert_str_eq(json_object_get_string(v), "${device");
    ck_assert(json_object_object_get_ex(o, "auth", &v));
    ck_assert_str_eq(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN), "{\"method\":\"cert\"}");
    json_object_put(o);
    free(out);
    ck_assert_ptr_null(mgmtd_profile_for("[1]", "dev-1", err, sizeof(err)));
    ck_assert_ptr_null(mgmtd_profile_for("{", "dev-1", err, sizeof(err)));
}
END_TEST

void mgmtd_log(const char *fmt, ...)
{
    (void)fmt;
}

int main(void)
{
    Suite *su = suite_create("mgmtd");
    TCase *tc = tcase_create("mgmtd");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, config_good);
    tcase_add_test(tc, config_bad);
    tcase_add_test(tc, profile_from_template);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
