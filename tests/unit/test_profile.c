/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Profile module: JSON profiles (valid, defaults, every field, multi-profile
 * sets, relative paths, files), refused profiles with their exact error
 * texts, and proposal strings.
 *
 * JSON in this file is written with ' for " (see dq()) so the cases stay
 * readable; the parser itself never sees a single quote unless a case says so.
 */
#include <arpa/inet.h>
#include <check.h>
#include <limits.h>
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "profile/profile.h"
#include "profile/proposal.h"
#include "profile/registry.h"

#define SECRET "S3cr3t-PSK-value"

/* Single quotes -> double quotes; the result lives until the next call. */
static const char *dq(const char *s)
{
    static char buf[8192];
    size_t n = strlen(s);
    ck_assert_uint_lt(n, sizeof(buf));
    for (size_t i = 0; i <= n; i++)
        buf[i] = s[i] == '\'' ? '"' : s[i];
    return buf;
}

static profile_set *parse_ok(const char *json, const char *base_dir)
{
    profile_set *set = NULL;
    char err[512] = "";
    int r = profile_set_parse(json, strlen(json), base_dir, &set, err, sizeof(err));
    ck_assert_msg(r == 0, "unexpected failure %d: %s", r, err);
    ck_assert_ptr_nonnull(set);
    return set;
}

static const char *testdata(void)
{
    const char *d = getenv("M2MVPN_TESTDATA");
    ck_assert_msg(d != NULL, "M2MVPN_TESTDATA is not set");
    return d;
}

static void assert_ts(const profile_ts *ts, int family, const char *addr, unsigned len)
{
    uint8_t want[16] = { 0 };
    ck_assert_int_eq(ts->family, family);
    ck_assert_int_eq(inet_pton(family, addr, want), 1);
    ck_assert_mem_eq(ts->addr, want, family == AF_INET ? 4 : 16);
    ck_assert_uint_eq(ts->prefix_len, len);
}

static void assert_proposal_text(const proposal *p, proposal_kind kind, const char *want)
{
    char text[256];
    proposal_format(p, kind, text, sizeof(text));
    ck_assert_str_eq(text, want);
}

/* ------------------------------------------------------------------ valid */

#define BASE_V "'version':1"
#define BASE_GW "'gateways':[{'host':'198.51.100.1'}]"
#define BASE_IDS "'local_id':'dev1','remote_id':'gw'"
#define BASE_PSK "'auth':{'method':'psk','psk':'" SECRET "'}"
#define BASE BASE_V ",'name':'p1'," BASE_GW "," BASE_IDS "," BASE_PSK
#define PROFILE_WITH(extra) "{" BASE "," extra "}"

/* A full tunnel in one family protects the other too, unless the profile
 * lists a prefix of it or says "listed". */
START_TEST(test_full_tunnel_families)
{
    static const struct {
        const char *tunnel;
        size_t n;
        int implied;
        const char *last;      /* the last remote_ts entry */
    } cases[] = {
        { "'remote_ts':['0.0.0.0/0']", 2, AF_INET6, "::/0" },
        { "'remote_ts':['::/0']", 2, AF_INET, "0.0.0.0/0" },
        { "'remote_ts':['0.0.0.0/0','::/0']", 2, 0, "::/0" },
        { "'remote_ts':['0.0.0.0/0','2001:db8:18::/48']", 2, 0, "2001:db8:18::/48" },
        { "'remote_ts':['::/0','198.18.0.0/15']", 2, 0, "198.18.0.0/15" },
        { "'remote_ts':['198.18.0.0/15']", 1, 0, "198.18.0.0/15" },
        { "'remote_ts':['2001:db8:18::/48']", 1, 0, "2001:db8:18::/48" },
        { "'remote_ts':['0.0.0.0/0'],'full_tunnel_families':'listed'", 1, 0, "0.0.0.0/0" },
        { "'remote_ts':['::/0'],'full_tunnel_families':'listed'", 1, 0, "::/0" },
        { "'remote_ts':['0.0.0.0/0'],'full_tunnel_families':'both'", 2, AF_INET6, "::/0" },
        { "'full_tunnel_families':'listed'", 1, 0, "0.0.0.0/0" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[512];
        snprintf(json, sizeof(json), "{" BASE ",'tunnel':{%s}}", cases[i].tunnel);
        profile_set *set = parse_ok(dq(json), NULL);
        const profile *p = &set->items[0];
        ck_assert_msg(p->tunnel.n_remote_ts == cases[i].n, "case %zu: %zu prefixes", i,
                      p->tunnel.n_remote_ts);
        ck_assert_msg(p->tunnel.implied_family == cases[i].implied, "case %zu", i);
        const profile_ts *t = &p->tunnel.remote_ts[p->tunnel.n_remote_ts - 1];
        char text[INET6_ADDRSTRLEN + 8], addr[INET6_ADDRSTRLEN];
        inet_ntop(t->family, t->addr, addr, sizeof(addr));
        snprintf(text, sizeof(text), "%s/%u", addr, t->prefix_len);
        ck_assert_msg(strcmp(text, cases[i].last) == 0, "case %zu: last %s", i, text);
        profile_set_free(set);
    }
}
END_TEST

START_TEST(test_minimal_psk_gets_every_default)
{
    profile_set *set = parse_ok(dq("{" BASE "}"), "/etc/m2mvpn");
    ck_assert_uint_eq(set->n, 1);
    const profile *p = &set->items[0];
    ck_assert_str_eq(p->name, "p1");
    ck_assert_int_eq(p->mode, PROFILE_MODE_ALWAYS_ON);
    ck_assert_uint_eq(p->n_gateways, 1);
    ck_assert_str_eq(p->gateways[0].host, "198.51.100.1");
    ck_assert_uint_eq(p->gateways[0].port, 500);
    ck_assert_str_eq(p->local_id, "dev1");
    ck_assert_str_eq(p->remote_id, "gw");
    ck_assert_int_eq(p->auth, PROFILE_AUTH_PSK);
    ck_assert_str_eq(p->psk, SECRET);
    ck_assert_uint_eq(p->n_ca, 0);

    ck_assert_uint_eq(p->ike.n_proposals, 1);
    assert_proposal_text(&p->ike.proposals[0], PROPOSAL_IKE,
                         "aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp256-modp3072");
    ck_assert_uint_eq(p->ike.lifetime_s, 14400);
    ck_assert_uint_eq(p->ike.dpd_s, 30);
    ck_assert(p->ike.fragmentation);
    ck_assert(p->ike.mobike);
    ck_assert_uint_eq(p->ike.nat_keepalive_s, 20);
    ck_assert_double_eq(p->ike.retransmit_timeout_s, 4.0);
    ck_assert_double_eq(p->ike.retransmit_base, 1.8);
    ck_assert_uint_eq(p->ike.retransmit_tries, 5);
    ck_assert(!p->ike.force_encap);
    ck_assert(!p->ike.allow_sha1_signatures);

    ck_assert_uint_eq(p->esp.n_proposals, 1);
    assert_proposal_text(&p->esp.proposals[0], PROPOSAL_ESP, "aes256gcm16-aes128gcm16");
    ck_assert_uint_eq(p->esp.proposals[0].n_esn, 1);
    ck_assert_uint_eq(p->esp.proposals[0].esn[0], ESN_NO);
    ck_assert_uint_eq(p->esp.lifetime_s, 3600);
    ck_assert_uint_eq(p->esp.lifetime_bytes, 0);
    ck_assert_uint_eq(p->esp.lifetime_packets, 0);
    ck_assert_uint_eq(p->ike.reauth_s, 0);
    ck_assert_uint_eq(p->esp.replay_window, 1024);
    ck_assert_uint_eq(p->esp.batch, 32);

    ck_assert(p->tunnel.request_vip);
    /* The default full tunnel protects both families (full_tunnel_families). */
    ck_assert_uint_eq(p->tunnel.n_remote_ts, 2);
    assert_ts(&p->tunnel.remote_ts[0], AF_INET, "0.0.0.0", 0);
    assert_ts(&p->tunnel.remote_ts[1], AF_INET6, "::", 0);
    ck_assert_int_eq(p->tunnel.implied_family, AF_INET6);
    ck_assert(!p->tunnel.full_tunnel_listed_only);
    ck_assert(p->tunnel.dns);
    ck_assert(p->tunnel.kill_switch);
    ck_assert(!p->tunnel.kill_switch_routing_only); /* no nftables layer: an error */
    ck_assert_str_eq(p->tunnel.tun_name, "m2m0");
    ck_assert_uint_eq(p->tunnel.mtu, 0);
    ck_assert_uint_eq(p->tunnel.on_demand_idle_s, 300);

    ck_assert_ptr_eq(profile_set_find(set, "p1"), p);
    ck_assert_ptr_null(profile_set_find(set, "p2"));
    ck_assert_ptr_null(profile_set_find(set, NULL));
    profile_set_free(set);
}
END_TEST

START_TEST(test_every_field_is_read)
{
    const char *json = dq("{'version':1,'name':'atm-eu.1','mode':'on-demand',"
        "'gateways':[{'host':'198.51.100.1','port':4500},{'host':'gw2.m2m.test.'},{'host':'2001:db8::5','port':1}],"
        "'local_id':'dev1.m2m.test','remote_id':'gw.m2m.test',"
        "'auth':{'method':'cert','cert':{'source':'file','file':'dev1.crt.pem','key':'/keys/dev1.key.pem','pin':'0000'}},"
        "'ca':['ca.pem','/abs/ca2.pem'],"
        "'ike':{'proposals':['aes128-sha256-modp2048','chacha20poly1305-prfsha512-x25519'],'lifetime_s':60,"
        "'dpd_s':0,'fragmentation':false,'mobike':false,'nat_keepalive_s':0,'retransmit_timeout_s':0.5,"
        "'retransmit_base':2,'retransmit_tries':0,'force_encap':true,"
        "'allow_sha1_signatures':true,'reauth_s':10},"
        "'esp':{'proposals':['aes256-sha512-ecp384-esn','aes128gcm16'],'lifetime_s':604800,'replay_window':0,"
        "'lifetime_bytes':9007199254740992,'lifetime_packets':1000,'batch':128},"
        "'tunnel':{'request_vip':false,'remote_ts':['198.18.0.0/15','10.1.2.3','2001:db8::/32'],'dns':false,"
        "'kill_switch':false,'tun_name':'vpn_0.a-b','mtu':9000,'on_demand_idle_s':0,"
        "'dns_hook':'hooks/dns'}}");
    profile_set *set = parse_ok(json, "/etc/m2mvpn/");
    const profile *p = &set->items[0];
    ck_assert_str_eq(p->name, "atm-eu.1");
    ck_assert_int_eq(p->mode, PROFILE_MODE_ON_DEMAND);
    ck_assert_uint_eq(p->n_gateways, 3);
    ck_assert_uint_eq(p->gateways[0].port, 4500);
    ck_assert_str_eq(p->gateways[1].host, "gw2.m2m.test.");
    ck_assert_uint_eq(p->gateways[1].port, 500);
    ck_assert_str_eq(p->gateways[2].host, "2001:db8::5");
    ck_assert_uint_eq(p->gateways[2].port, 1);
    ck_assert_int_eq(p->auth, PROFILE_AUTH_CERT);
    ck_assert_int_eq(p->cert.source, PROFILE_CERT_FILE);
    ck_assert_str_eq(p->cert.file, "/etc/m2mvpn/dev1.crt.pem");
    ck_assert_str_eq(p->cert.key, "/keys/dev1.key.pem");
    ck_assert_str_eq(p->cert.pin, "0000");
    ck_assert_ptr_null(p->psk);
    ck_assert_uint_eq(p->n_ca, 2);
    ck_assert_str_eq(p->ca[0], "/etc/m2mvpn/ca.pem");
    ck_assert_str_eq(p->ca[1], "/abs/ca2.pem");

    ck_assert_uint_eq(p->ike.n_proposals, 2);
    assert_proposal_text(&p->ike.proposals[0], PROPOSAL_IKE, "aes128-sha256-prfsha256-modp2048");
    assert_proposal_text(&p->ike.proposals[1], PROPOSAL_IKE, "chacha20poly1305-prfsha512-x25519");
    ck_assert_uint_eq(p->ike.lifetime_s, 60);
    ck_assert_uint_eq(p->ike.reauth_s, 10);
    ck_assert_uint_eq(p->ike.dpd_s, 0);
    ck_assert(!p->ike.fragmentation);
    ck_assert(!p->ike.mobike);
    ck_assert_uint_eq(p->ike.nat_keepalive_s, 0);
    ck_assert_double_eq(p->ike.retransmit_timeout_s, 0.5);
    ck_assert_double_eq(p->ike.retransmit_base, 2.0);
    ck_assert_uint_eq(p->ike.retransmit_tries, 0);
    ck_assert(p->ike.force_encap);
    ck_assert(p->ike.allow_sha1_signatures);

    ck_assert_uint_eq(p->esp.n_proposals, 2);
    assert_proposal_text(&p->esp.proposals[0], PROPOSAL_ESP, "aes256-sha512-ecp384-esn");
    assert_proposal_text(&p->esp.proposals[1], PROPOSAL_ESP, "aes128gcm16");
    ck_assert_uint_eq(p->esp.lifetime_s, 604800);
    ck_assert_uint_eq(p->esp.lifetime_bytes, (uint64_t)1 << 53);
    ck_assert_uint_eq(p->esp.lifetime_packets, 1000);
    ck_assert_uint_eq(p->esp.replay_window, 0);
    ck_assert_uint_eq(p->esp.batch, 128);

    ck_assert(!p->tunnel.request_vip);
    ck_assert_uint_eq(p->tunnel.n_remote_ts, 3);
    assert_ts(&p->tunnel.remote_ts[0], AF_INET, "198.18.0.0", 15);
    assert_ts(&p->tunnel.remote_ts[1], AF_INET, "10.1.2.3", 32);
    assert_ts(&p->tunnel.remote_ts[2], AF_INET6, "2001:db8::", 32);
    ck_assert(!p->tunnel.dns);
    ck_assert(!p->tunnel.kill_switch);
    ck_assert_str_eq(p->tunnel.tun_name, "vpn_0.a-b");
    ck_assert_uint_eq(p->tunnel.mtu, 9000);
    ck_assert_uint_eq(p->tunnel.on_demand_idle_s, 0);
    ck_assert_str_eq(p->tunnel.dns_hook, "/etc/m2mvpn/hooks/dns"); /* relative: against the folder */
    profile_set_free(set);
}
END_TEST

START_TEST(test_cert_sources)
{
    profile_set *set = parse_ok(dq("{'version':1,'profiles':["
        "{'name':'a','gateways':[{'host':'gw'}],'remote_id':'gw','auth':{'method':'cert',"
        " 'cert':{'source':'file','file':'sub/dev.PFX'}}},"
        "{'name':'b','gateways':[{'host':'gw'}],'remote_id':'gw','auth':{'method':'cert',"
        " 'cert':{'source':'pkcs11','pkcs11_module':'libsofthsm2.so','pkcs11_uri':'pkcs11:token=m2m;object=dev1','pin':'1234'}}},"
        "{'name':'c','gateways':[{'host':'gw'}],'remote_id':'gw','auth':{'method':'cert',"
        " 'cert':{'source':'tpm','file':'dev.pem','tpm_key':'0x81000001'}}},"
        "{'name':'d','gateways':[{'host':'gw'}],'remote_id':'gw','auth':{'method':'cert',"
        " 'cert':{'source':'machine','file':'/var/lib/m2mvpn/machine.pem','key':'machine.bound',"
        "  'bind_sources':['machine-id','mac:eth0','file:/etc/serial']}}},"
        "{'version':1,'name':'e','gateways':[{'host':'gw'}],'remote_id':'gw','auth':{'method':'cert',"
        " 'cert':{'source':'tpm','file':'keys/dev.pem','tpm_key':'keys/dev.tss2.pem','tpm_tcti':'device:/dev/tpmrm0'}}}]}"),
        "/base");
    ck_assert_uint_eq(set->n, 5);
    const profile *a = profile_set_find(set, "a");
    ck_assert_int_eq(a->cert.source, PROFILE_CERT_FILE);
    ck_assert_str_eq(a->cert.file, "/base/sub/dev.PFX");
    ck_assert_ptr_null(a->cert.key);
    ck_assert_ptr_null(a->cert.pin);
    ck_assert_ptr_null(a->local_id); /* the certificate's subject is used */

    const profile *b = profile_set_find(set, "b");
    ck_assert_int_eq(b->cert.source, PROFILE_CERT_PKCS11);
    ck_assert_str_eq(b->cert.pkcs11_module, "libsofthsm2.so");
    ck_assert_str_eq(b->cert.pkcs11_uri, "pkcs11:token=m2m;object=dev1");
    ck_assert_str_eq(b->cert.pin, "1234");

    const profile *c = profile_set_find(set, "c");
    ck_assert_int_eq(c->cert.source, PROFILE_CERT_TPM);
    ck_assert_str_eq(c->cert.tpm_key, "0x81000001");
    ck_assert_ptr_null(c->cert.tpm_tcti);
    ck_assert_str_eq(c->cert.file, "/base/dev.pem");

    const profile *d = profile_set_find(set, "d");
    ck_assert_int_eq(d->cert.source, PROFILE_CERT_MACHINE);
    ck_assert_str_eq(d->cert.file, "/var/lib/m2mvpn/machine.pem");
    ck_assert_str_eq(d->cert.key, "/base/machine.bound");
    ck_assert_str_eq(d->cert.bind_sources, "machine-id,mac:eth0,file:/etc/serial");

    const profile *e = profile_set_find(set, "e");
    ck_assert_str_eq(e->cert.tpm_key, "/base/keys/dev.tss2.pem");
    ck_assert_str_eq(e->cert.tpm_tcti, "device:/dev/tpmrm0");
    profile_set_free(set);
}
END_TEST

/* The kill switch without its nftables layer, by explicit choice only. */
START_TEST(test_kill_switch_routing_only_is_read)
{
    profile_set *set = parse_ok(dq("{" BASE ",'tunnel':{'kill_switch_routing_only':true}}"), "/etc/m2mvpn");
    ck_assert(set->items[0].tunnel.kill_switch);
    ck_assert(set->items[0].tunnel.kill_switch_routing_only);
    profile_set_free(set);
}
END_TEST

START_TEST(test_eap_local_id_defaults_to_identity)
{
    profile_set *set = parse_ok(dq("{'version':1,'name':'e','gateways':[{'host':'gw'}],'remote_id':'gw',"
                                   "'auth':{'method':'eap','eap':{'type':'mschapv2','identity':'dev7','password':'pw'}}}"),
                                NULL);
    const profile *p = &set->items[0];
    ck_assert_int_eq(p->auth, PROFILE_AUTH_EAP);
    ck_assert_str_eq(p->eap.type, "mschapv2");
    ck_assert_str_eq(p->eap.identity, "dev7");
    ck_assert_str_eq(p->eap.password, "pw");
    ck_assert_str_eq(p->local_id, "dev7");
    profile_set_free(set);

    set = parse_ok(dq("{'version':1,'name':'e','gateways':[{'host':'gw'}],'local_id':'other','remote_id':'gw',"
                      "'auth':{'method':'eap','eap':{'type':'mschapv2','identity':'dev7'}}}"), NULL);
    ck_assert_str_eq(set->items[0].local_id, "other");
    ck_assert_ptr_null(set->items[0].eap.password); /* asked with CREDENTIALS_REQUIRED */
    profile_set_free(set);
}
END_TEST

START_TEST(test_relative_paths_without_base_use_cwd)
{
    char cwd[PATH_MAX], want[PATH_MAX + 32];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
    const char *json = dq("{" BASE ",'ca':['ca.pem','./x/./ca2.pem']}");

    profile_set *set = parse_ok(json, NULL);
    snprintf(want, sizeof(want), "%s/ca.pem", strcmp(cwd, "/") ? cwd : "");
    ck_assert_str_eq(set->items[0].ca[0], want);
    snprintf(want, sizeof(want), "%s/x/./ca2.pem", strcmp(cwd, "/") ? cwd : "");
    ck_assert_str_eq(set->items[0].ca[1], want);
    profile_set_free(set);

    set = parse_ok(json, "conf");
    snprintf(want, sizeof(want), "%s/conf/ca.pem", strcmp(cwd, "/") ? cwd : "");
    ck_assert_str_eq(set->items[0].ca[0], want);
    profile_set_free(set);

    set = parse_ok(json, "/");
    ck_assert_str_eq(set->items[0].ca[0], "/ca.pem");
    profile_set_free(set);
}
END_TEST

START_TEST(test_load_file_resolves_against_its_folder)
{
    char path[PATH_MAX], want[PATH_MAX + 64], err[512] = "";
    snprintf(path, sizeof(path), "%s/profiles/fleet.json", testdata());
    profile_set *set = NULL;
    int r = profile_set_load_file(path, &set, err, sizeof(err));
    ck_assert_msg(r == 0, "%s", err);
    ck_assert_uint_eq(set->n, 3);

    const profile *eu = profile_set_find(set, "eu-cert");
    ck_assert_ptr_nonnull(eu);
    snprintf(want, sizeof(want), "%s/profiles/certs/dev1.p12", testdata());
    ck_assert_str_eq(eu->cert.file, want);
    ck_assert_str_eq(eu->cert.pin, "1234");
    ck_assert_uint_eq(eu->n_ca, 3);
    snprintf(want, sizeof(want), "%s/profiles/certs/ca.pem", testdata());
    ck_assert_str_eq(eu->ca[0], want);
    ck_assert_str_eq(eu->ca[1], "/etc/m2mvpn/ca2.pem");
    snprintf(want, sizeof(want), "%s/profiles/certs/ca3.pem", testdata());
    ck_assert_str_eq(eu->ca[2], want);

    const profile *us = profile_set_find(set, "us-tpm");
    snprintf(want, sizeof(want), "%s/profiles/certs/dev1.tss2.pem", testdata());
    ck_assert_str_eq(us->cert.tpm_key, want);
    ck_assert_str_eq(us->cert.tpm_tcti, "swtpm:host=127.0.0.1,port=2321");

    const profile *lab = profile_set_find(set, "lab-eap");
    ck_assert_int_eq(lab->mode, PROFILE_MODE_MANUAL);
    ck_assert_str_eq(lab->gateways[0].host, "2001:db8::1");
    ck_assert_str_eq(lab->local_id, "dev1");
    profile_set_free(set);
}
END_TEST

START_TEST(test_load_file_with_comments)
{
    char path[PATH_MAX], want[PATH_MAX + 64], err[512] = "";
    snprintf(path, sizeof(path), "%s/profiles/atm-psk.json", testdata());
    profile_set *set = NULL;
    int r = profile_set_load_file(path, &set, err, sizeof(err));
    ck_assert_msg(r == 0, "%s", err);
    const profile *p = &set->items[0];
    ck_assert_str_eq(p->name, "atm-psk");
    ck_assert_int_eq(p->mode, PROFILE_MODE_ON_DEMAND);
    ck_assert_uint_eq(p->n_gateways, 2);
    ck_assert_str_eq(p->gateways[1].host, "gw2.m2m.test");
    ck_assert_uint_eq(p->gateways[1].port, 4500);
    ck_assert_str_eq(p->psk, "correct horse battery staple");
    snprintf(want, sizeof(want), "%s/profiles/ca.pem", testdata());
    ck_assert_str_eq(p->ca[0], want);
    profile_set_free(set);
}
END_TEST

/* The example of docs/profile.md must load as documented. */
START_TEST(test_documentation_example_loads)
{
    char path[PATH_MAX], err[512] = "";
    snprintf(path, sizeof(path), "%s/../../../docs/profile.md", testdata());
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    static char doc[65536];
    size_t n = fread(doc, 1, sizeof(doc) - 1, f);
    fclose(f);
    doc[n] = '\0';
    const char *example = strstr(doc, "## Example");
    ck_assert_ptr_nonnull(example);
    const char *start = strstr(example, "```json\n");
    ck_assert_ptr_nonnull(start);
    start += strlen("```json\n");
    const char *end = strstr(start, "```");
    ck_assert_ptr_nonnull(end);

    profile_set *set = NULL;
    int r = profile_set_parse(start, (size_t)(end - start), "/etc/m2mvpn", &set, err, sizeof(err));
    ck_assert_msg(r == 0, "docs/profile.md example: %s", err);
    ck_assert_uint_eq(set->n, 2);
    const profile *atm = profile_set_find(set, "atm-eu");
    ck_assert_ptr_nonnull(atm);
    ck_assert_str_eq(atm->cert.file, "/etc/m2mvpn/certs/dev1.p12");
    ck_assert_uint_eq(atm->ike.n_proposals, 2);
    ck_assert_uint_eq(atm->tunnel.mtu, 1400);
    const profile *lab = profile_set_find(set, "lab-psk");
    ck_assert_ptr_nonnull(lab);
    ck_assert_int_eq(lab->mode, PROFILE_MODE_MANUAL);
    profile_set_free(set);

    /* The IPv6-only device. */
    example = strstr(doc, "## Example: an IPv6-only device");
    ck_assert_ptr_nonnull(example);
    start = strstr(example, "```json\n");
    ck_assert_ptr_nonnull(start);
    start += strlen("```json\n");
    end = strstr(start, "```");
    ck_assert_ptr_nonnull(end);
    set = NULL;
    r = profile_set_parse(start, (size_t)(end - start), "/etc/m2mvpn", &set, err, sizeof(err));
    ck_assert_msg(r == 0, "docs/profile.md IPv6-only example: %s", err);
    ck_assert_uint_eq(set->n, 1);
    ck_assert_str_eq(set->items[0].gateways[0].host, "2001:db8:100::1");
    ck_assert_uint_eq(set->items[0].tunnel.n_remote_ts, 1);
    ck_assert_int_eq(set->items[0].tunnel.remote_ts[0].family, AF_INET6);
    profile_set_free(set);
}
END_TEST

START_TEST(test_load_file_errors)
{
    char path[PATH_MAX], want[PATH_MAX + 128], err[PATH_MAX + 128] = "";
    profile_set sentinel, *set = &sentinel;

    snprintf(path, sizeof(path), "%s/profiles/no-such-file.json", testdata());
    ck_assert_int_eq(profile_set_load_file(path, &set, err, sizeof(err)), M2MVPN_E_IO);
    snprintf(want, sizeof(want), "cannot read %s: No such file or directory", path);
    ck_assert_str_eq(err, want);
    ck_assert_ptr_eq(set, &sentinel);

    snprintf(path, sizeof(path), "%s/profiles", testdata());
    ck_assert_int_eq(profile_set_load_file(path, &set, err, sizeof(err)), M2MVPN_E_IO);
    snprintf(want, sizeof(want), "cannot read %s: Is a directory", path);
    ck_assert_str_eq(err, want);
    ck_assert_ptr_eq(set, &sentinel);

    /* Just over 1 MiB of white space: refused before parsing. */
    const char *tmp = getenv("TMPDIR");
    char tdir[PATH_MAX - 64];
    snprintf(tdir, sizeof(tdir), "%s/m2mvpn-test-profile-XXXXXX", tmp && *tmp ? tmp : P_tmpdir);
    ck_assert_ptr_nonnull(mkdtemp(tdir));
    snprintf(path, sizeof(path), "%s/big.json", tdir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(dq("{" BASE "}"), f);
    for (int i = 0; i < 1024 * 1024; i++)
        fputc(' ', f);
    fclose(f);
    ck_assert_int_eq(profile_set_load_file(path, &set, err, sizeof(err)), M2MVPN_E_IO);
    snprintf(want, sizeof(want), "cannot read %s: larger than 1 MiB", path);
    ck_assert_str_eq(err, want);
    ck_assert_ptr_eq(set, &sentinel);

    /* The same file cut to the limit loads. */
    ck_assert_int_eq(truncate(path, 1024 * 1024), 0);
    ck_assert_int_eq(profile_set_load_file(path, &set, err, sizeof(err)), 0);
    ck_assert_str_eq(set->items[0].name, "p1");
    profile_set_free(set);
    unlink(path);
    rmdir(tdir);

    set = &sentinel;
    ck_assert_int_eq(profile_set_load_file(NULL, &set, err, sizeof(err)), M2MVPN_E_INVAL);
    ck_assert_int_eq(profile_set_load_file("x", NULL, err, sizeof(err)), M2MVPN_E_INVAL);
    ck_assert_int_eq(profile_set_parse(NULL, 0, NULL, &set, err, sizeof(err)), M2MVPN_E_INVAL);
    ck_assert_ptr_eq(set, &sentinel);
}
END_TEST

START_TEST(test_byte_order_mark_ignored)
{
    char text[1024];
    snprintf(text, sizeof(text), "\xef\xbb\xbf%s", dq("{" BASE "}"));
    profile_set *set = parse_ok(text, NULL);
    ck_assert_str_eq(set->items[0].name, "p1");
    profile_set_free(set);

    /* Only at the start: elsewhere it is not white space. */
    snprintf(text, sizeof(text), "%s\xef\xbb\xbf", dq("{" BASE "}"));
    profile_set sentinel, *ret = &sentinel;
    char err[256];
    ck_assert_int_eq(profile_set_parse(text, strlen(text), NULL, &ret, err, sizeof(err)), M2MVPN_E_JSON);
    ck_assert_str_eq(err, "line 1, column 147: unexpected character");
    ck_assert_ptr_eq(ret, &sentinel);
}
END_TEST

START_TEST(test_parse_uses_len_not_nul)
{
    /* A buffer without a NUL after the object: only len bytes count. */
    const char *text = dq("{" BASE "}garbage");
    size_t len = strlen(text) - strlen("garbage");
    profile_set *set = NULL;
    char err[256] = "";
    ck_assert_int_eq(profile_set_parse(text, len, NULL, &set, err, sizeof(err)), 0);
    profile_set_free(set);
    ck_assert_int_eq(profile_set_parse(text, strlen(text), NULL, &set, err, sizeof(err)), M2MVPN_E_JSON);
    ck_assert_str_eq(err, "line 1, column 147: unexpected character");
    profile_set_free(NULL);
}
END_TEST

/* ----------------------------------------------------------------- invalid */

/*
 * The refused profiles live in data/profiles/invalid-cases.txt (its header
 * explains the format); main() loads them before the suite is built and
 * refuses to run on any line it does not understand.
 */
#define MAX_BAD_CASES 256
#define MAX_DEFINES 16
#define CASE_TEXT_MAX 8192

typedef struct bad_case {
    char *json;
    int error;
    char *message;
    int line; /* of the json: line, for failure messages */
} bad_case;

static bad_case bad_cases[MAX_BAD_CASES];
static size_t n_bad_cases;
static char *bad_case_secret; /* the file's SECRET define */

typedef struct define {
    char name[32];
    char *value;
} define;

/* $NAME -> its define; for json: lines also ' -> ", \n -> line break, \t -> tab. */
static char *expand(const char *s, const define *defs, size_t n_defs, bool json)
{
    char *out = malloc(CASE_TEXT_MAX), *w = out;
    for (const char *p = s; *p && w < out + CASE_TEXT_MAX - 1024; p++) {
        size_t nl = strspn(p + 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_"), d = 0;
        if (*p == '$') {
            while (d < n_defs && !(strlen(defs[d].name) == nl && strncmp(defs[d].name, p + 1, nl) == 0))
                d++;
            if (d == n_defs) {
                free(out);
                return NULL;
            }
            w += strlen(strcpy(w, defs[d].value));
            p += nl;
        } else if (json && p[0] == '\\' && (p[1] == 'n' || p[1] == 't')) {
            *w++ = p[1] == 'n' ? '\n' : '\t';
            p++;
        } else {
            *w++ = *p;
        }
    }
    *w = '\0';
    for (char *q = out; json && *q; q++)
        if (*q == '\'')
            *q = '"';
    return out;
}

static int load_bad_cases(void)
{
    char path[PATH_MAX], line[CASE_TEXT_MAX], name[32];
    const char *data = getenv("M2MVPN_TESTDATA");
    snprintf(path, sizeof(path), "%s/profiles/invalid-cases.txt", data ? data : ".");
    FILE *f = fopen(path, "r");
    if (!f)
        return fprintf(stderr, "cannot open %s\n", path), -1;
    define defs[MAX_DEFINES];
    size_t n_defs = 0;
    int lineno = 0, value_at = 0;
    bool ok = true;
    while (ok && fgets(line, sizeof(line), f)) {
        lineno++;
        line[strcspn(line, "\n")] = '\0';
        bad_case *c = &bad_cases[n_bad_cases];
        if (line[0] == '#' || line[0] == '\0') {
            continue;
        } else if (sscanf(line, "define %31[A-Z_] = %n", name, &value_at) == 1 && n_defs < MAX_DEFINES) {
            snprintf(defs[n_defs].name, sizeof(defs[n_defs].name), "%s", name);
            ok = (defs[n_defs].value = expand(line + value_at, defs, n_defs, false)) != NULL;
            n_defs++;
        } else if (strncmp(line, "json: ", 6) == 0 && !c->json && n_bad_cases < MAX_BAD_CASES - 1) {
            ok = (c->json = expand(line + 6, defs, n_defs, true)) != NULL;
            c->line = lineno;
        } else if (strncmp(line, "want: PROFILE ", 14) == 0 && c->json) {
            c->error = M2MVPN_E_PROFILE;
            c->message = strdup(line + 14);
            n_bad_cases++;
        } else if (strncmp(line, "want: JSON ", 11) == 0 && c->json) {
            c->error = M2MVPN_E_JSON;
            c->message = strdup(line + 11);
            n_bad_cases++;
        } else {
            ok = false;
        }
    }
    fclose(f);
    for (size_t i = 0; i < n_defs; i++) {
        if (strcmp(defs[i].name, "SECRET") == 0 && defs[i].value)
            bad_case_secret = strdup(defs[i].value);
        free(defs[i].value);
    }
    ok = ok && bad_case_secret && !bad_cases[n_bad_cases].json;
    if (!ok)
        fprintf(stderr, "%s:%d: not a line of this format (or a json: without want:)\n", path, lineno);
    return ok ? 0 : -1;
}

static void free_bad_cases(void)
{
    for (size_t i = 0; i <= n_bad_cases && i < MAX_BAD_CASES; i++) {
        free(bad_cases[i].json);
        free(bad_cases[i].message);
    }
    free(bad_case_secret);
}

START_TEST(test_enough_invalid_cases)
{
    ck_assert_uint_ge(n_bad_cases, 100);
}
END_TEST

START_TEST(test_invalid_profile)
{
    const bad_case *c = &bad_cases[_i];
    profile_set sentinel, *set = &sentinel;
    char err[512];
    memset(err, 'X', sizeof(err));
    int r = profile_set_parse(c->json, strlen(c->json), "/etc/m2mvpn", &set, err, sizeof(err));
    ck_assert_msg(r == c->error, "invalid-cases.txt:%d: got %d (%s)", c->line, r, r ? err : "");
    ck_assert_msg(strcmp(err, c->message) == 0, "invalid-cases.txt:%d: got \"%s\"", c->line, err);
    ck_assert_ptr_eq(set, &sentinel);
    ck_assert_ptr_null(strstr(err, bad_case_secret));
}
END_TEST

START_TEST(test_json_syntax_outside_dq)
{
    /* Cases that need a real single quote or a NUL byte. */
    static const struct { const char *json; size_t len; const char *message; } cases[] = {
        { "{'version': 1}", 14, "line 1, column 2: strings must be in double quotes" },
        { "{\"version\": 1}\0", 15, "line 1, column 15: NUL byte in input" },
        { "{\"name\\u0000x\": 1}", 18, "line 1, column 2: escape sequence in a key (profile keys are plain names)" },
        /* An escaped key could hide a repeated one ("\u0070sk" is "psk"). */
        { "{\"psk\": \"a\", \"\\u0070sk\": \"b\"}", 29, "line 1, column 14: escape sequence in a key (profile keys are plain names)" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        profile_set sentinel, *set = &sentinel;
        char err[256] = "";
        int r = profile_set_parse(cases[i].json, cases[i].len, NULL, &set, err, sizeof(err));
        ck_assert_int_lt(r, 0);
        ck_assert_str_eq(err, cases[i].message);
        ck_assert_ptr_eq(set, &sentinel);
    }
}
END_TEST

START_TEST(test_secret_with_nul_refused)
{
    const char *json = "{\"version\":1,\"name\":\"p\",\"gateways\":[{\"host\":\"gw\"}],\"local_id\":\"d\","
                       "\"remote_id\":\"gw\",\"auth\":{\"method\":\"psk\",\"psk\":\"ab\\u0000cd\"}}";
    profile_set sentinel, *set = &sentinel;
    char err[256] = "";
    ck_assert_int_eq(profile_set_parse(json, strlen(json), NULL, &set, err, sizeof(err)), M2MVPN_E_PROFILE);
    ck_assert_str_eq(err, "auth.psk: must not contain a NUL character");
    ck_assert_ptr_eq(set, &sentinel);
}
END_TEST

START_TEST(test_error_buffer_small_or_null)
{
    const char *json = dq(PROFILE_WITH("'tunnel':{'kill_swich':true}"));
    profile_set *set = NULL;
    char err[8];
    ck_assert_int_eq(profile_set_parse(json, strlen(json), NULL, &set, err, sizeof(err)), M2MVPN_E_PROFILE);
    ck_assert_str_eq(err, "tunnel.");
    ck_assert_int_eq(profile_set_parse(json, strlen(json), NULL, &set, NULL, 0), M2MVPN_E_PROFILE);
    ck_assert_ptr_null(set);
}
END_TEST

START_TEST(test_max_sizes_accepted)
{
    /* 32 profiles of 8 gateways each, all names distinct. */
    static char json[65536];
    size_t pos = (size_t)snprintf(json, sizeof(json), "{\"version\":1,\"profiles\":[");
    for (int i = 0; i < 32; i++) {
        pos += (size_t)snprintf(json + pos, sizeof(json) - pos, "%s{\"name\":\"p%d\",\"gateways\":[", i ? "," : "", i);
        for (int g = 0; g < 8; g++)
            pos += (size_t)snprintf(json + pos, sizeof(json) - pos, "%s{\"host\":\"198.51.100.%d\"}", g ? "," : "", g + 1);
        pos += (size_t)snprintf(json + pos, sizeof(json) - pos,
                                "],\"local_id\":\"d\",\"remote_id\":\"gw\",\"auth\":{\"method\":\"psk\",\"psk\":\"k\"}}");
    }
    snprintf(json + pos, sizeof(json) - pos, "]}");
    profile_set *set = parse_ok(json, NULL);
    ck_assert_uint_eq(set->n, 32);
    ck_assert_uint_eq(set->items[31].n_gateways, 8);
    ck_assert_str_eq(set->items[31].gateways[7].host, "198.51.100.8");
    ck_assert_ptr_eq(profile_set_find(set, "p17"), &set->items[17]);
    profile_set_free(set);

    /* One more profile is refused. */
    json[pos] = '\0';
    snprintf(json + pos, sizeof(json) - pos, ",{\"name\":\"x\"}]}");
    profile_set sentinel, *ret = &sentinel;
    char err[256];
    ck_assert_int_eq(profile_set_parse(json, strlen(json), NULL, &ret, err, sizeof(err)), M2MVPN_E_PROFILE);
    ck_assert_str_eq(err, "profiles: must be an array of 1..32 profiles");
}
END_TEST

START_TEST(test_enum_names)
{
    ck_assert_str_eq(profile_mode_name(PROFILE_MODE_ALWAYS_ON), "always-on");
    ck_assert_str_eq(profile_mode_name(PROFILE_MODE_ON_DEMAND), "on-demand");
    ck_assert_str_eq(profile_mode_name(PROFILE_MODE_MANUAL), "manual");
    ck_assert_str_eq(profile_mode_name((profile_mode)9), "unknown");
    ck_assert_str_eq(profile_auth_name(PROFILE_AUTH_PSK), "psk");
    ck_assert_str_eq(profile_auth_name(PROFILE_AUTH_EAP), "eap");
    ck_assert_str_eq(profile_auth_name(PROFILE_AUTH_CERT), "cert");
    ck_assert_str_eq(profile_cert_source_name(PROFILE_CERT_FILE), "file");
    ck_assert_str_eq(profile_cert_source_name(PROFILE_CERT_MACHINE), "machine");
    ck_assert_str_eq(profile_cert_source_name(PROFILE_CERT_PKCS11), "pkcs11");
    ck_assert_str_eq(profile_cert_source_name(PROFILE_CERT_TPM), "tpm");
    ck_assert_str_eq(proposal_kind_name(PROPOSAL_IKE), "IKE");
    ck_assert_str_eq(proposal_kind_name(PROPOSAL_ESP), "ESP");
}
END_TEST

/* --------------------------------------------------------------- proposals */

typedef struct good_proposal {
    const char *text;
    proposal_kind kind;
    const char *canonical;  /* proposal_format() of the result */
} good_proposal;

static const good_proposal good_proposals[] = {
    { "aes256gcm16-prfsha384-x25519", PROPOSAL_IKE, "aes256gcm16-prfsha384-x25519" },
    { "aes128gcm16-prfsha256-ecp256", PROPOSAL_IKE, "aes128gcm16-prfsha256-ecp256" },
    { "aes256-sha256-modp2048", PROPOSAL_IKE, "aes256-sha256-prfsha256-modp2048" },
    { "aes128-aes256-sha384-sha512-ecp384-ecp521", PROPOSAL_IKE,
      "aes128-aes256-sha384-sha512-prfsha384-prfsha512-ecp384-ecp521" },
    { "aes128-sha256-prfsha512-modp4096", PROPOSAL_IKE, "aes128-sha256-prfsha512-modp4096" },
    { "chacha20poly1305-prfsha256-x25519", PROPOSAL_IKE, "chacha20poly1305-prfsha256-x25519" },
    { "aes256gcm128-prfsha256-curve25519", PROPOSAL_IKE, "aes256gcm16-prfsha256-x25519" },
    { "aes128gcm128-aes128gcm16-prfsha256-x25519-x25519", PROPOSAL_IKE, "aes128gcm16-prfsha256-x25519" },
    { "aes256gcm16-sha256-x25519", PROPOSAL_IKE, "aes256gcm16-prfsha256-x25519" },
    { "x25519-prfsha256-aes256gcm16", PROPOSAL_IKE, "aes256gcm16-prfsha256-x25519" },
    { "aes256-sha2_256-modp3072", PROPOSAL_IKE, "aes256-sha256-prfsha256-modp3072" },
    { "aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp256-modp3072", PROPOSAL_IKE,
      "aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp256-modp3072" },
    { "aes256gcm16", PROPOSAL_ESP, "aes256gcm16" },
    { "aes256gcm16-noesn", PROPOSAL_ESP, "aes256gcm16" },
    { "aes128gcm16-esn", PROPOSAL_ESP, "aes128gcm16-esn" },
    { "aes128gcm16-esn-noesn", PROPOSAL_ESP, "aes128gcm16-esn-noesn" },
    { "aes128gcm16-noesn-esn", PROPOSAL_ESP, "aes128gcm16-noesn-esn" },
    { "chacha20poly1305-x25519", PROPOSAL_ESP, "chacha20poly1305-x25519" },
    { "aes256-sha512", PROPOSAL_ESP, "aes256-sha512" },
    { "aes128-sha256-sha384-modp2048", PROPOSAL_ESP, "aes128-sha256-sha384-modp2048" },
    { "aes256gcm16-sha256", PROPOSAL_ESP, "aes256gcm16" },
};
#define N_GOOD_PROPOSALS (sizeof(good_proposals) / sizeof(good_proposals[0]))

static void assert_same_proposal(const proposal *a, const proposal *b)
{
    ck_assert_uint_eq(a->n_encr, b->n_encr);
    for (size_t i = 0; i < a->n_encr; i++) {
        ck_assert_uint_eq(a->encr[i].id, b->encr[i].id);
        ck_assert_uint_eq(a->encr[i].key_bits, b->encr[i].key_bits);
    }
    ck_assert_uint_eq(a->n_prf, b->n_prf);
    ck_assert_mem_eq(a->prf, b->prf, a->n_prf * sizeof(a->prf[0]));
    ck_assert_uint_eq(a->n_integ, b->n_integ);
    ck_assert_mem_eq(a->integ, b->integ, a->n_integ * sizeof(a->integ[0]));
    ck_assert_uint_eq(a->n_ke, b->n_ke);
    ck_assert_mem_eq(a->ke, b->ke, a->n_ke * sizeof(a->ke[0]));
    ck_assert_uint_eq(a->n_esn, b->n_esn);
    ck_assert_mem_eq(a->esn, b->esn, a->n_esn * sizeof(a->esn[0]));
}

START_TEST(test_proposal_valid_and_round_trip)
{
    const good_proposal *c = &good_proposals[_i];
    proposal p, again;
    char err[160] = "", text[256];
    int r = proposal_parse(c->text, c->kind, &p, err, sizeof(err));
    ck_assert_msg(r == 0, "%s: %s", c->text, err);
    proposal_format(&p, c->kind, text, sizeof(text));
    ck_assert_str_eq(text, c->canonical);
    ck_assert_int_eq(proposal_parse(text, c->kind, &again, err, sizeof(err)), 0);
    assert_same_proposal(&p, &again);
}
END_TEST

START_TEST(test_proposal_ids)
{
    proposal p;
    char err[160];
    ck_assert_int_eq(proposal_parse("aes128-aes256-sha256-sha384-sha512-modp2048-modp3072-modp4096-ecp256-ecp384-ecp521-x25519",
                                    PROPOSAL_IKE, &p, err, sizeof(err)), 0);
    /* IANA IKEv2 transform IDs (RFC 7296 §3.3.2; RFC 4868; RFC 5903; RFC 8031). */
    ck_assert_uint_eq(p.n_encr, 2);
    ck_assert_uint_eq(p.encr[0].id, 12);
    ck_assert_uint_eq(p.encr[0].key_bits, 128);
    ck_assert_uint_eq(p.encr[1].id, 12);
    ck_assert_uint_eq(p.encr[1].key_bits, 256);
    uint16_t integ[] = { 12, 13, 14 }, prf[] = { 5, 6, 7 }, ke[] = { 14, 15, 16, 19, 20, 21, 31 };
    ck_assert_uint_eq(p.n_integ, 3);
    ck_assert_mem_eq(p.integ, integ, sizeof(integ));
    ck_assert_uint_eq(p.n_prf, 3);
    ck_assert_mem_eq(p.prf, prf, sizeof(prf));
    ck_assert_uint_eq(p.n_ke, 7);
    ck_assert_mem_eq(p.ke, ke, sizeof(ke));
    ck_assert_uint_eq(p.n_esn, 0);

    ck_assert_int_eq(proposal_parse("aes256gcm16-aes128gcm16-chacha20poly1305-esn", PROPOSAL_ESP, &p, err, sizeof(err)), 0);
    ck_assert_uint_eq(p.encr[0].id, 20); /* RFC 4106 */
    ck_assert_uint_eq(p.encr[0].key_bits, 256);
    ck_assert_uint_eq(p.encr[1].id, 20);
    ck_assert_uint_eq(p.encr[1].key_bits, 128);
    ck_assert_uint_eq(p.encr[2].id, 28); /* RFC 7634 */
    ck_assert_uint_eq(p.encr[2].key_bits, 256);
    ck_assert_uint_eq(p.n_integ, 0);
    ck_assert_uint_eq(p.n_prf, 0);
    ck_assert_uint_eq(p.n_esn, 1);
    ck_assert_uint_eq(p.esn[0], ESN_YES);
    ck_assert(proposal_encr_is_aead(ENCR_AES_GCM_16));
    ck_assert(proposal_encr_is_aead(ENCR_CHACHA20_POLY1305));
    ck_assert(!proposal_encr_is_aead(ENCR_AES_CBC));
}
END_TEST

typedef struct bad_proposal {
    const char *text;
    proposal_kind kind;
    const char *message;
} bad_proposal;

static const bad_proposal bad_proposals[] = {
    { "aes512-sha256-x25519", PROPOSAL_IKE, "unknown algorithm 'aes512'" },
    { "AES256-sha256-x25519", PROPOSAL_IKE, "unknown algorithm 'AES256'" },
    { "aes256-sha1-x25519", PROPOSAL_IKE, "unknown algorithm 'sha1'" },
    { "aes256-sha256-modp1024", PROPOSAL_IKE, "unknown algorithm 'modp1024'" },
    { "aes256gcm16 -prfsha256-x25519", PROPOSAL_IKE, "unknown algorithm 'aes256gcm16 '" },
    { "aes256-sha256-x25519\x01", PROPOSAL_IKE, "unknown algorithm 'x25519?'" },
    { "", PROPOSAL_IKE, "empty proposal" },
    { "aes256--sha256-x25519", PROPOSAL_IKE, "empty algorithm name (two '-' in a row, or '-' at an end)" },
    { "aes256-sha256-x25519-", PROPOSAL_IKE, "empty algorithm name (two '-' in a row, or '-' at an end)" },
    { "-aes256-sha256-x25519", PROPOSAL_IKE, "empty algorithm name (two '-' in a row, or '-' at an end)" },
    { "sha256-prfsha256-x25519", PROPOSAL_IKE, "needs an encryption algorithm, e.g. 'aes256gcm16'" },
    { "aes256gcm16-aes128-sha256-x25519", PROPOSAL_IKE,
      "mixes AEAD ('aes256gcm16') and non-AEAD ('aes128') ciphers; use two proposals" },
    { "aes256-x25519", PROPOSAL_IKE, "'aes256' needs an integrity algorithm, e.g. 'sha256'" },
    { "aes256-prfsha256-x25519", PROPOSAL_IKE, "'aes256' needs an integrity algorithm, e.g. 'sha256'" },
    { "aes256gcm16-x25519", PROPOSAL_IKE, "needs a PRF with an AEAD cipher, e.g. 'prfsha256'" },
    { "aes256gcm16-prfsha256", PROPOSAL_IKE, "needs a key exchange method, e.g. 'x25519'" },
    { "aes256-sha256", PROPOSAL_IKE, "needs a key exchange method, e.g. 'x25519'" },
    { "aes256gcm16-prfsha256-x25519-esn", PROPOSAL_IKE, "'esn' is only used in ESP proposals" },
    { "aes256gcm16-prfsha256", PROPOSAL_ESP, "'prfsha256' is a PRF, only used in IKE proposals" },
    { "aes128-modp2048", PROPOSAL_ESP, "'aes128' needs an integrity algorithm, e.g. 'sha256'" },
    { "chacha20poly1305-aes256-sha256", PROPOSAL_ESP,
      "mixes AEAD ('chacha20poly1305') and non-AEAD ('aes256') ciphers; use two proposals" },
    { "x25519", PROPOSAL_ESP, "needs an encryption algorithm, e.g. 'aes256gcm16'" },
    { "aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-"
      "aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-"
      "aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16-aes256gcm16",
      PROPOSAL_ESP, "longer than 255 characters" },
    { "aes256gcm16-averyveryveryveryveryverylongalgorithmname", PROPOSAL_ESP,
      "unknown algorithm 'averyveryveryveryveryverylongalg...'" },
};
#define N_BAD_PROPOSALS (sizeof(bad_proposals) / sizeof(bad_proposals[0]))

START_TEST(test_proposal_invalid)
{
    const bad_proposal *c = &bad_proposals[_i];
    proposal p;
    memset(&p, 0xa5, sizeof(p));
    proposal untouched = p;
    char err[160] = "";
    ck_assert_int_eq(proposal_parse(c->text, c->kind, &p, err, sizeof(err)), M2MVPN_E_PROFILE);
    ck_assert_str_eq(err, c->message);
    ck_assert_mem_eq(&p, &untouched, sizeof(p));
}
END_TEST

START_TEST(test_proposal_names_and_format_limits)
{
    ck_assert_str_eq(proposal_encr_name(ENCR_AES_CBC, 128), "aes128");
    ck_assert_str_eq(proposal_encr_name(ENCR_AES_GCM_16, 256), "aes256gcm16");
    ck_assert_str_eq(proposal_encr_name(ENCR_CHACHA20_POLY1305, 256), "chacha20poly1305");
    ck_assert_str_eq(proposal_encr_name(ENCR_AES_CBC, 192), "unknown");
    ck_assert_str_eq(proposal_integ_name(AUTH_HMAC_SHA2_384_192), "sha384");
    ck_assert_str_eq(proposal_prf_name(PRF_HMAC_SHA2_512), "prfsha512");
    ck_assert_str_eq(proposal_ke_name(KE_X25519), "x25519");
    ck_assert_str_eq(proposal_ke_name(KE_ECP521), "ecp521");
    ck_assert_str_eq(proposal_ke_name(2), "unknown");
    ck_assert_str_eq(proposal_esn_name(ESN_YES), "esn");

    proposal p;
    char err[64], small[12];
    ck_assert_int_eq(proposal_parse("aes256gcm16-prfsha384-x25519", PROPOSAL_IKE, &p, err, sizeof(err)), 0);
    proposal_format(&p, PROPOSAL_IKE, small, sizeof(small));
    ck_assert_str_eq(small, "aes256gcm16"); /* a prefix, NUL-terminated */
    proposal_format(&p, PROPOSAL_IKE, small, 1);
    ck_assert_str_eq(small, "");
    ck_assert_int_eq(proposal_parse(NULL, PROPOSAL_IKE, &p, err, sizeof(err)), M2MVPN_E_INVAL);
    ck_assert_int_eq(proposal_parse("aes256gcm16", PROPOSAL_ESP, NULL, err, sizeof(err)), M2MVPN_E_INVAL);
    ck_assert_int_eq(proposal_parse("aes256gcm16", PROPOSAL_ESP, &p, NULL, 0), 0);
}

/* ------------------------------------------------------------ registry */

/* A set of PSK profiles named by the letters of `names`, tagged by `mtu`. */
static profile_set *letters(const char *names, unsigned mtu)
{
    char json[4096] = "{'version':1,'profiles':[";
    for (const char *c = names; *c; c++) {
        size_t u = strlen(json);
        snprintf(json + u, sizeof(json) - u, "%s{'name':'%c'," BASE_GW "," BASE_IDS "," BASE_PSK
                 ",'tunnel':{'mtu':%u}}", c == names ? "" : ",", *c, mtu);
    }
    strcat(json, "]}");
    return parse_ok(dq(json), NULL);
}

static unsigned mtu_of(const profile_registry *r, const char *name)
{
    const profile *p = profile_registry_find(r, name, NULL);
    return p ? p->tunnel.mtu : 0;
}

/* Loading replaces by name, unloading hides a name or frees the set, a
 * name loaded again is visible again; the newest visible profile is next. */
START_TEST(test_registry)
{
    profile_registry r = { 0 };
    ck_assert_int_eq(profile_registry_add(&r, letters("ab", 1000)), 0);
    ck_assert_int_eq(profile_registry_add(&r, letters("bc", 1100)), 0);
    ck_assert_uint_eq(mtu_of(&r, "a"), 1000);
    ck_assert_uint_eq(mtu_of(&r, "b"), 1100); /* replaced by the newer set */
    ck_assert_uint_eq(r.n_sets, 2);
    ck_assert_str_eq(profile_registry_newest(&r)->name, "b");

    /* "a" alone keeps the first set; unloading it frees that set. */
    ck_assert(profile_registry_remove(&r, "a"));
    ck_assert_uint_eq(r.n_sets, 1);
    ck_assert_uint_eq(mtu_of(&r, "a"), 0);
    ck_assert(!profile_registry_remove(&r, "a"));
    /* "b" of a set that still shows "c": hidden, the set stays. */
    ck_assert(profile_registry_remove(&r, "b"));
    ck_assert_uint_eq(r.n_sets, 1);
    ck_assert_uint_eq(mtu_of(&r, "b"), 0);
    ck_assert_uint_eq(mtu_of(&r, "c"), 1100);
    ck_assert_str_eq(profile_registry_newest(&r)->name, "c");
    /* Loaded again: visible again, from the new set. */
    ck_assert_int_eq(profile_registry_add(&r, letters("b", 1200)), 0);
    ck_assert_uint_eq(mtu_of(&r, "b"), 1200);
    ck_assert_uint_eq(r.n_unloaded, 0);
    /* Replacing every profile of a set frees it. */
    ck_assert_int_eq(profile_registry_add(&r, letters("bc", 1300)), 0);
    ck_assert_uint_eq(r.n_sets, 1);
    ck_assert_uint_eq(mtu_of(&r, "c"), 1300);
    ck_assert(profile_registry_remove(&r, "b"));
    ck_assert(profile_registry_remove(&r, "c"));
    ck_assert_uint_eq(r.n_sets, 0);
    ck_assert_ptr_null(profile_registry_newest(&r));
    profile_registry_clear(&r);
}
END_TEST

END_TEST

static Suite *profile_suite(void)
{
    Suite *s = suite_create("profile");
    TCase *tc = tcase_create("valid");
    tcase_add_test(tc, test_registry);
    tcase_add_test(tc, test_minimal_psk_gets_every_default);
    tcase_add_test(tc, test_full_tunnel_families);
    tcase_add_test(tc, test_every_field_is_read);
    tcase_add_test(tc, test_cert_sources);
    tcase_add_test(tc, test_eap_local_id_defaults_to_identity);
    tcase_add_test(tc, test_kill_switch_routing_only_is_read);
    tcase_add_test(tc, test_relative_paths_without_base_use_cwd);
    tcase_add_test(tc, test_load_file_resolves_against_its_folder);
    tcase_add_test(tc, test_load_file_with_comments);
    tcase_add_test(tc, test_documentation_example_loads);
    tcase_add_test(tc, test_max_sizes_accepted);
    tcase_add_test(tc, test_enum_names);
    suite_add_tcase(s, tc);

    tc = tcase_create("invalid");
    tcase_add_test(tc, test_enough_invalid_cases);
    tcase_add_loop_test(tc, test_invalid_profile, 0, (int)n_bad_cases);
    tcase_add_test(tc, test_json_syntax_outside_dq);
    tcase_add_test(tc, test_secret_with_nul_refused);
    tcase_add_test(tc, test_error_buffer_small_or_null);
    tcase_add_test(tc, test_load_file_errors);
    tcase_add_test(tc, test_parse_uses_len_not_nul);
    tcase_add_test(tc, test_byte_order_mark_ignored);
    suite_add_tcase(s, tc);

    tc = tcase_create("proposal");
    tcase_add_loop_test(tc, test_proposal_valid_and_round_trip, 0, (int)N_GOOD_PROPOSALS);
    tcase_add_test(tc, test_proposal_ids);
    tcase_add_loop_test(tc, test_proposal_invalid, 0, (int)N_BAD_PROPOSALS);
    tcase_add_test(tc, test_proposal_names_and_format_limits);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (load_bad_cases() < 0) {
        free_bad_cases();
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(profile_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    free_bad_cases();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
