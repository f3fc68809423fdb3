/* SPDX-License-Identifier: Apache-2.0 */
#include "profile_schema.h"

#include <arpa/inet.h>
#include <errno.h>
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/secmem.h"

#define TRY(expr)               \
    do {                        \
        int try_r_ = (expr);    \
        if (try_r_ < 0)         \
            return try_r_;      \
    } while (0)

/* Limits of docs/profile.md; see there for the reasons. */
#define NAME_MAX_CHARS 63
#define ID_MAX_CHARS 255
#define HOST_MAX_CHARS 253
#define PATH_MAX_CHARS 4095
#define PSK_MAX_CHARS 1024
#define PASSWORD_MAX_CHARS 256 /* same limit as m2mvpn_enter_pin() */
#define TCTI_MAX_CHARS 255
#define TUN_NAME_MAX_CHARS 15  /* IFNAMSIZ - 1 */

#define DEFAULT_IKE_PROPOSAL "aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp256-modp3072"
#define DEFAULT_ESP_PROPOSAL "aes256gcm16-aes128gcm16"

/* ------------------------------------------------------------ name tables */

static const char *const mode_names[] = {
    [PROFILE_MODE_ALWAYS_ON] = "always-on",
    [PROFILE_MODE_ON_DEMAND] = "on-demand",
    [PROFILE_MODE_MANUAL] = "manual",
};
static const char *const auth_names[] = {
    [PROFILE_AUTH_PSK] = "psk",
    [PROFILE_AUTH_EAP] = "eap",
    [PROFILE_AUTH_CERT] = "cert",
};
static const char *const cert_source_names[] = {
    [PROFILE_CERT_FILE] = "file",
    [PROFILE_CERT_MACHINE] = "machine",
    [PROFILE_CERT_PKCS11] = "pkcs11",
    [PROFILE_CERT_TPM] = "tpm",
};
static const char *const eap_type_names[] = { "mschapv2", "md5" };

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

const char *profile_mode_name(profile_mode m)
{
    return (size_t)m < N_OF(mode_names) ? mode_names[m] : "unknown";
}

const char *profile_auth_name(profile_auth a)
{
    return (size_t)a < N_OF(auth_names) ? auth_names[a] : "unknown";
}

const char *profile_cert_source_name(profile_cert_source s)
{
    return (size_t)s < N_OF(cert_source_names) ? cert_source_names[s] : "unknown";
}

/* ------------------------------------------------------------- helpers */

static int require(keypath *kp, json_object *obj, const char *key)
{
    if (!json_object_object_get_ex(obj, key, NULL))
        return keypath_fail_at(kp, key, "required");
    return 0;
}

/* A string member that is a file path, resolved against the profile's folder. */
static int read_path(keypath *kp, json_object *obj, const char *key, path_base *base, char **out)
{
    char *given = NULL;
    TRY(keypath_string(kp, obj, key, 1, PATH_MAX_CHARS, false, &given));
    if (!given)
        return 0;
    char why[128];
    int r = path_resolve(base, given, out, why, sizeof(why));
    free(given);
    if (r == M2MVPN_E_NOMEM)
        return r;
    if (r < 0) {
        keypath_fail_at(kp, key, "%s", why);
        return r;
    }
    return 0;
}

/* ---------------------------------------------------------------- gateways */

static int read_gateway(keypath *kp, json_object *g, profile_gateway *out)
{
    static const char *const keys[] = { "host", "port", NULL };
    if (!json_object_is_type(g, json_type_object))
        return keypath_fail(kp, "must be an object");
    TRY(keypath_check_keys(kp, g, keys));
    TRY(require(kp, g, "host"));
    TRY(keypath_string(kp, g, "host", 1, HOST_MAX_CHARS, false, &out->host));
    if (!value_is_host(out->host))
        return keypath_fail_at(kp, "host", "must be a host name or IP address");
    uint32_t port = 500;
    TRY(keypath_uint(kp, g, "port", 1, 65535, &port));
    out->port = (uint16_t)port;
    return 0;
}

static int read_gateways(keypath *kp, json_object *obj, profile *p)
{
    json_object *arr;
    TRY(require(kp, obj, "gateways"));
    TRY(keypath_array(kp, obj, "gateways", 1, PROFILE_MAX_GATEWAYS, "gateways", &arr));
    size_t mark = keypath_push_key(kp, "gateways");
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        size_t m = keypath_push_index(kp, i);
        p->n_gateways = i + 1;
        TRY(read_gateway(kp, json_object_array_get_idx(arr, i), &p->gateways[i]));
        keypath_pop(kp, m);
    }
    keypath_pop(kp, mark);
    return 0;
}

/* -------------------------------------------------------------------- auth */

static int refuse_if_present(keypath *kp, json_object *obj, const char *key, const char *why_key,
                             const char *why_value)
{
    if (json_object_object_get_ex(obj, key, NULL))
        return keypath_fail_at(kp, key, "not allowed when %s is \"%s\"", why_key, why_value);
    return 0;
}

static int read_eap(keypath *kp, json_object *eap, profile *p)
{
    static const char *const keys[] = { "type", "identity", "password", NULL };
    TRY(keypath_check_keys(kp, eap, keys));
    TRY(require(kp, eap, "type"));
    int type = 0;
    TRY(keypath_enum(kp, eap, "type", eap_type_names, N_OF(eap_type_names), &type));
    p->eap.type = strdup(eap_type_names[type]);
    if (!p->eap.type)
        return M2MVPN_E_NOMEM;
    TRY(require(kp, eap, "identity"));
    TRY(keypath_string(kp, eap, "identity", 1, ID_MAX_CHARS, false, &p->eap.identity));
    TRY(keypath_string(kp, eap, "password", 1, PASSWORD_MAX_CHARS, true, &p->eap.password));
    return 0;
}

enum cert_key_bit {
    CK_SOURCE = 1u << 0, CK_FILE = 1u << 1, CK_KEY = 1u << 2, CK_PIN = 1u << 3,
    CK_MODULE = 1u << 4, CK_URI = 1u << 5, CK_TPM_KEY = 1u << 6, CK_TCTI = 1u << 7,
    CK_BIND = 1u << 8,
};
/* In bit order of cert_key_bit. */
static const char *const cert_keys[] = { "source", "file", "key", "pin", "pkcs11_module",
                                         "pkcs11_uri", "tpm_key", "tpm_tcti", "bind_sources", NULL };
/* The keys each source uses; any other is refused, so a key meant for
 * another source (or a copy-paste left-over) does not pass unnoticed. */
static const unsigned cert_keys_allowed[] = {
    [PROFILE_CERT_FILE] = CK_SOURCE | CK_FILE | CK_KEY | CK_PIN,
    [PROFILE_CERT_MACHINE] = CK_SOURCE | CK_FILE | CK_KEY | CK_PIN | CK_BIND,
    [PROFILE_CERT_PKCS11] = CK_SOURCE | CK_MODULE | CK_URI | CK_PIN,
    [PROFILE_CERT_TPM] = CK_SOURCE | CK_FILE | CK_TPM_KEY | CK_TCTI | CK_PIN,
};

static int require_for_source(keypath *kp, json_object *cert, const char *key, profile_cert_source s)
{
    if (!json_object_object_get_ex(cert, key, NULL))
        return keypath_fail_at(kp, key, "required when auth.cert.source is \"%s\"",
                               profile_cert_source_name(s));
    return 0;
}

static int read_cert_file_source(keypath *kp, json_object *cert, path_base *base, profile *p)
{
    profile_cert_source s = p->cert.source;
    TRY(require_for_source(kp, cert, "file", s));
    TRY(read_path(kp, cert, "file", base, &p->cert.file));
    bool p12 = value_is_pkcs12_name(p->cert.file);
    bool has_key = json_object_object_get_ex(cert, "key", NULL);
    if (p12 && has_key)
        return keypath_fail_at(kp, "key", "not allowed with a .p12/.pfx file (it holds the key)");
    if (!p12 && !has_key && s == PROFILE_CERT_FILE)
        return keypath_fail_at(kp, "key", "required unless auth.cert.file is a .p12/.pfx file");
    if (!has_key && s == PROFILE_CERT_MACHINE)
        return keypath_fail_at(kp, "key", "required when auth.cert.source is \"machine\" (the bound key file "
                                          "made by 'm2mvpn bind-key')");
    return read_path(kp, cert, "key", base, &p->cert.key);
}

/* One fingerprint source: machine-id, dmi-uuid, mac:IFNAME, file:/PATH. */
static bool bind_source_ok(const char *v)
{
    if (!strcmp(v, "machine-id") || !strcmp(v, "dmi-uuid"))
        return true;
    if (!strncmp(v, "mac:", 4))
        return strlen(v + 4) >= 1 && strlen(v + 4) <= 15 && !strchr(v + 4, '/') && !strchr(v, ',') && v[4] != '.';
    if (!strncmp(v, "file:", 5))
        return v[5] == '/' && strlen(v + 5) <= PATH_MAX_CHARS && !strchr(v, ',');
    return false;
}

/* auth.cert.bind_sources: kept as one comma-separated string, the way the
 * bound key file records them. */
static int read_bind_sources(keypath *kp, json_object *cert, profile *p)
{
    json_object *arr;
    TRY(keypath_array(kp, cert, "bind_sources", 1, 8, "fingerprint sources", &arr));
    if (!arr)
        return 0;
    size_t mark = keypath_push_key(kp, "bind_sources"), total = 0;
    /* On the heap: 32 KB on the stack would stay resident after the load. */
    const size_t cap = 8 * (PATH_MAX_CHARS + 8);
    char *joined = malloc(cap);
    if (!joined)
        return M2MVPN_E_NOMEM;
    joined[0] = '\0';
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *v = json_object_array_get_idx(arr, i);
        size_t m = keypath_push_index(kp, i);
        const char *str = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
        if (!str || strlen(str) != (size_t)json_object_get_string_len(v) || !bind_source_ok(str)) {
            free(joined);
            return keypath_fail(kp, "must be \"machine-id\", \"dmi-uuid\", \"mac:IFNAME\" or \"file:/ABSOLUTE/PATH\"");
        }
        total += (size_t)snprintf(joined + total, cap - total, "%s%s", i ? "," : "", str);
        keypath_pop(kp, m);
    }
    keypath_pop(kp, mark);
    p->cert.bind_sources = strdup(joined);
    free(joined);
    return p->cert.bind_sources ? 0 : M2MVPN_E_NOMEM;
}

static int read_cert_tpm_key(keypath *kp, json_object *cert, path_base *base, profile *p)
{
    TRY(require_for_source(kp, cert, "tpm_key", PROFILE_CERT_TPM));
    char *given = NULL;
    TRY(keypath_string(kp, cert, "tpm_key", 1, PATH_MAX_CHARS, false, &given));
    if (value_looks_like_handle(given)) {
        if (!value_is_tpm_handle(given)) {
            free(given);
            return keypath_fail_at(kp, "tpm_key", "must be a persistent handle 0x81000000..0x81ffffff "
                                                  "or a key file");
        }
        p->cert.tpm_key = given;
        return 0;
    }
    free(given);
    return read_path(kp, cert, "tpm_key", base, &p->cert.tpm_key);
}

static int read_cert(keypath *kp, json_object *cert, path_base *base, profile *p)
{
    TRY(keypath_check_keys(kp, cert, cert_keys));
    TRY(require(kp, cert, "source"));
    int source = 0;
    TRY(keypath_enum(kp, cert, "source", cert_source_names, N_OF(cert_source_names), &source));
    p->cert.source = (profile_cert_source)source;
    for (size_t i = 0; cert_keys[i]; i++)
        if (!(cert_keys_allowed[source] & (1u << i)))
            TRY(refuse_if_present(kp, cert, cert_keys[i], "auth.cert.source", cert_source_names[source]));

    switch (p->cert.source) {
    case PROFILE_CERT_FILE:
        TRY(read_cert_file_source(kp, cert, base, p));
        break;
    case PROFILE_CERT_MACHINE:
        TRY(read_cert_file_source(kp, cert, base, p));
        TRY(read_bind_sources(kp, cert, p));
        break;
    case PROFILE_CERT_PKCS11:
        TRY(require_for_source(kp, cert, "pkcs11_module", PROFILE_CERT_PKCS11));
        /* Kept as given: a bare library name is for the dynamic loader's search. */
        TRY(keypath_string(kp, cert, "pkcs11_module", 1, PATH_MAX_CHARS, false, &p->cert.pkcs11_module));
        TRY(require_for_source(kp, cert, "pkcs11_uri", PROFILE_CERT_PKCS11));
        TRY(keypath_string(kp, cert, "pkcs11_uri", 8, PATH_MAX_CHARS, false, &p->cert.pkcs11_uri));
        if (strncmp(p->cert.pkcs11_uri, "pkcs11:", 7) != 0)
            return keypath_fail_at(kp, "pkcs11_uri", "must start with \"pkcs11:\" (RFC 7512)");
        break;
    case PROFILE_CERT_TPM:
        TRY(read_cert_tpm_key(kp, cert, base, p));
        /* The TPM holds the key; the certificate (+ chain) is a PEM file. */
        TRY(require_for_source(kp, cert, "file", PROFILE_CERT_TPM));
        TRY(read_path(kp, cert, "file", base, &p->cert.file));
        TRY(keypath_string(kp, cert, "tpm_tcti", 1, TCTI_MAX_CHARS, false, &p->cert.tpm_tcti));
        break;
    }
    return keypath_string(kp, cert, "pin", 1, PASSWORD_MAX_CHARS, true, &p->cert.pin);
}

static int read_auth(keypath *kp, json_object *obj, path_base *base, profile *p)
{
    static const char *const keys[] = { "method", "psk", "eap", "cert", NULL };
    json_object *auth;
    TRY(require(kp, obj, "auth"));
    TRY(keypath_object(kp, obj, "auth", &auth));
    size_t mark = keypath_push_key(kp, "auth");
    TRY(keypath_check_keys(kp, auth, keys));
    TRY(require(kp, auth, "method"));
    int method = 0;
    TRY(keypath_enum(kp, auth, "method", auth_names, N_OF(auth_names), &method));
    p->auth = (profile_auth)method;

    /* Only the section of the chosen method may be present. */
    static const char *const sections[] = { [PROFILE_AUTH_PSK] = "psk", [PROFILE_AUTH_EAP] = "eap",
                                            [PROFILE_AUTH_CERT] = "cert" };
    for (int i = 0; i < (int)N_OF(sections); i++)
        if (i != method)
            TRY(refuse_if_present(kp, auth, sections[i], "auth.method", auth_names[method]));
    if (!json_object_object_get_ex(auth, sections[method], NULL))
        return keypath_fail_at(kp, sections[method], "required when auth.method is \"%s\"", auth_names[method]);

    json_object *section;
    switch (p->auth) {
    case PROFILE_AUTH_PSK:
        TRY(keypath_string(kp, auth, "psk", 1, PSK_MAX_CHARS, true, &p->psk));
        break;
    case PROFILE_AUTH_EAP:
        TRY(keypath_object(kp, auth, "eap", &section));
        keypath_push_key(kp, "eap");
        TRY(read_eap(kp, section, p));
        break;
    case PROFILE_AUTH_CERT:
        TRY(keypath_object(kp, auth, "cert", &section));
        keypath_push_key(kp, "cert");
        TRY(read_cert(kp, section, base, p));
        break;
    }
    keypath_pop(kp, mark);
    return 0;
}

/* --------------------------------------------------------------------- ca */

static int read_ca(keypath *kp, json_object *obj, path_base *base, profile *p)
{
    json_object *arr;
    TRY(keypath_array(kp, obj, "ca", 0, PROFILE_MAX_CA, "paths", &arr));
    if (!arr)
        return 0;
    size_t mark = keypath_push_key(kp, "ca");
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *v = json_object_array_get_idx(arr, i);
        size_t m = keypath_push_index(kp, i);
        const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
        if (!s)
            return keypath_fail(kp, "must be a string");
        if (strlen(s) != (size_t)json_object_get_string_len(v) || !s[0] || strlen(s) > PATH_MAX_CHARS)
            return keypath_fail(kp, "must be a path of 1..%d characters", PATH_MAX_CHARS);
        char why[128];
        int r = path_resolve(base, s, &p->ca[i], why, sizeof(why));
        if (r == M2MVPN_E_NOMEM)
            return r;
        if (r < 0) {
            keypath_fail(kp, "%s", why);
            return r;
        }
        p->n_ca = i + 1;
        keypath_pop(kp, m);
    }
    keypath_pop(kp, mark);
    return 0;
}

/* -------------------------------------------------------------- ike / esp */

static int read_proposals(keypath *kp, json_object *sec, proposal_kind kind, proposal *out, size_t *n_out)
{
    json_object *arr;
    TRY(keypath_array(kp, sec, "proposals", 1, PROFILE_MAX_PROPOSALS, "proposal strings", &arr));
    if (!arr)
        return 0;
    size_t mark = keypath_push_key(kp, "proposals");
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *v = json_object_array_get_idx(arr, i);
        size_t m = keypath_push_index(kp, i);
        if (!json_object_is_type(v, json_type_string))
            return keypath_fail(kp, "must be a string");
        char why[160];
        int r = proposal_parse(json_object_get_string(v), kind, &out[i], why, sizeof(why));
        if (r < 0)
            return keypath_fail(kp, "%s", why);
        /* A NUL inside the JSON string would hide the rest from the parser. */
        if (strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
            return keypath_fail(kp, "must not contain a NUL character");
        *n_out = i + 1;
        keypath_pop(kp, m);
    }
    keypath_pop(kp, mark);
    return 0;
}

static int read_ike(keypath *kp, json_object *obj, profile *p)
{
    static const char *const keys[] = { "proposals", "lifetime_s", "reauth_s", "dpd_s", "fragmentation",
                                        "mobike", "nat_keepalive_s", "retransmit_timeout_s", "retransmit_base",
                                        "retransmit_tries", "force_encap", "allow_sha1_signatures", NULL };
    json_object *ike;
    TRY(keypath_object(kp, obj, "ike", &ike));
    if (!ike)
        return 0;
    size_t mark = keypath_push_key(kp, "ike");
    TRY(keypath_check_keys(kp, ike, keys));
    TRY(read_proposals(kp, ike, PROPOSAL_IKE, p->ike.proposals, &p->ike.n_proposals));
    TRY(keypath_uint(kp, ike, "lifetime_s", 10, 604800, &p->ike.lifetime_s));
    TRY(keypath_uint(kp, ike, "reauth_s", 0, 604800, &p->ike.reauth_s));
    if (p->ike.reauth_s && p->ike.reauth_s < 10)
        return keypath_fail_at(kp, "reauth_s", "must be 0 (never) or 10..604800");
    TRY(keypath_uint(kp, ike, "dpd_s", 0, 86400, &p->ike.dpd_s));
    TRY(keypath_bool(kp, ike, "fragmentation", &p->ike.fragmentation));
    TRY(keypath_bool(kp, ike, "mobike", &p->ike.mobike));
    TRY(keypath_uint(kp, ike, "nat_keepalive_s", 0, 3600, &p->ike.nat_keepalive_s));
    TRY(keypath_double(kp, ike, "retransmit_timeout_s", 0.1, 120.0, &p->ike.retransmit_timeout_s));
    TRY(keypath_double(kp, ike, "retransmit_base", 1.0, 10.0, &p->ike.retransmit_base));
    TRY(keypath_uint(kp, ike, "retransmit_tries", 0, 30, &p->ike.retransmit_tries));
    TRY(keypath_bool(kp, ike, "force_encap", &p->ike.force_encap));
    TRY(keypath_bool(kp, ike, "allow_sha1_signatures", &p->ike.allow_sha1_signatures));
    keypath_pop(kp, mark);
    return 0;
}

#define ESP_MIN_LIFETIME_BYTES 65536
#define ESP_MIN_LIFETIME_PACKETS 1000

static int read_esp(keypath *kp, json_object *obj, profile *p)
{
    static const char *const keys[] = { "proposals", "lifetime_s", "lifetime_bytes", "lifetime_packets",
                                        "replay_window", "batch", NULL };
    json_object *esp;
    TRY(keypath_object(kp, obj, "esp", &esp));
    if (!esp)
        return 0;
    size_t mark = keypath_push_key(kp, "esp");
    TRY(keypath_check_keys(kp, esp, keys));
    TRY(read_proposals(kp, esp, PROPOSAL_ESP, p->esp.proposals, &p->esp.n_proposals));
    TRY(keypath_uint(kp, esp, "lifetime_s", 10, 604800, &p->esp.lifetime_s));
    /* 0 = none; else enough for a rekey to finish before the hard limit
     * (the soft one comes at 80..90 %), at most 2^53 (exact in any JSON). */
    TRY(keypath_uint64(kp, esp, "lifetime_bytes", 0, (uint64_t)1 << 53, &p->esp.lifetime_bytes));
    if (p->esp.lifetime_bytes && p->esp.lifetime_bytes < ESP_MIN_LIFETIME_BYTES)
        return keypath_fail_at(kp, "lifetime_bytes", "must be 0 (none) or %u..9007199254740992",
                               (unsigned)ESP_MIN_LIFETIME_BYTES);
    TRY(keypath_uint64(kp, esp, "lifetime_packets", 0, (uint64_t)1 << 53, &p->esp.lifetime_packets));
    if (p->esp.lifetime_packets && p->esp.lifetime_packets < ESP_MIN_LIFETIME_PACKETS)
        return keypath_fail_at(kp, "lifetime_packets", "must be 0 (none) or %u..9007199254740992",
                               (unsigned)ESP_MIN_LIFETIME_PACKETS);
    TRY(keypath_uint(kp, esp, "replay_window", 0, 65536, &p->esp.replay_window));
    TRY(keypath_uint(kp, esp, "batch", 1, 128, &p->esp.batch));
    keypath_pop(kp, mark);
    return 0;
}

/* ------------------------------------------------------------------ tunnel */

static int read_remote_ts(keypath *kp, json_object *tun, profile *p)
{
    json_object *arr;
    TRY(keypath_array(kp, tun, "remote_ts", 1, PROFILE_MAX_TS, "prefixes", &arr));
    if (!arr)
        return 0;
    size_t mark = keypath_push_key(kp, "remote_ts");
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *v = json_object_array_get_idx(arr, i);
        size_t m = keypath_push_index(kp, i);
        const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
        if (!s)
            return keypath_fail(kp, "must be a string");
        char suggest[INET6_ADDRSTRLEN + 8];
        prefix_fault f = strlen(s) == (size_t)json_object_get_string_len(v)
                             ? value_parse_prefix(s, &p->tunnel.remote_ts[i], suggest, sizeof(suggest))
                             : PREFIX_MALFORMED;
        if (f == PREFIX_HOST_BITS)
            return keypath_fail(kp, "host bits set (did you mean \"%s\"?)", suggest);
        if (f != PREFIX_OK)
            return keypath_fail(kp, "must be an IPv4 or IPv6 prefix like \"198.18.0.0/15\"");
        p->tunnel.n_remote_ts = i + 1;
        keypath_pop(kp, m);
    }
    keypath_pop(kp, mark);
    return 0;
}

/* The family a full tunnel in remote_ts implies as well (AF_INET6 for a
 * 0.0.0.0/0 with no IPv6 prefix listed, and the other way round), or 0. */
static int implied_family(const profile *p)
{
    if (p->tunnel.full_tunnel_listed_only)
        return 0;
    bool full4 = false, full6 = false, any4 = false, any6 = false;
    for (size_t i = 0; i < p->tunnel.n_remote_ts; i++) {
        const profile_ts *t = &p->tunnel.remote_ts[i];
        bool v6 = t->family == AF_INET6;
        *(v6 ? &any6 : &any4) = true;
        if (t->prefix_len == 0)
            *(v6 ? &full6 : &full4) = true;
    }
    return full4 && !any6 ? AF_INET6 : full6 && !any4 ? AF_INET : 0;
}

static int read_tunnel(keypath *kp, json_object *obj, path_base *base, profile *p)
{
    static const char *const keys[] = { "request_vip", "remote_ts", "dns", "kill_switch",
                                        "kill_switch_routing_only", "tun_name", "mtu",
                                        "on_demand_idle_s", "dns_hook", "full_tunnel_families",
                                        NULL };
    static const char *const families[] = { "both", "listed" };
    json_object *tun;
    TRY(keypath_object(kp, obj, "tunnel", &tun));
    if (!tun)
        return 0;
    size_t mark = keypath_push_key(kp, "tunnel");
    TRY(keypath_check_keys(kp, tun, keys));
    TRY(keypath_bool(kp, tun, "request_vip", &p->tunnel.request_vip));
    TRY(read_remote_ts(kp, tun, p));
    int listed = 0;
    TRY(keypath_enum(kp, tun, "full_tunnel_families", families, 2, &listed));
    p->tunnel.full_tunnel_listed_only = listed == 1;
    if (implied_family(p) && p->tunnel.n_remote_ts == PROFILE_MAX_TS)
        return keypath_fail_at(kp, "remote_ts", "a full tunnel protects the other address family "
                               "too (full_tunnel_families \"both\"), which needs one of the %d "
                               "places: list fewer prefixes", PROFILE_MAX_TS);
    TRY(keypath_bool(kp, tun, "dns", &p->tunnel.dns));
    TRY(keypath_bool(kp, tun, "kill_switch", &p->tunnel.kill_switch));
    TRY(keypath_bool(kp, tun, "kill_switch_routing_only", &p->tunnel.kill_switch_routing_only));
    if (p->tunnel.kill_switch_routing_only && !p->tunnel.kill_switch)
        return keypath_fail_at(kp, "kill_switch_routing_only", "needs kill_switch true");
    TRY(keypath_string(kp, tun, "tun_name", 1, TUN_NAME_MAX_CHARS, false, &p->tunnel.tun_name));
    if (p->tunnel.tun_name && !value_is_plain_name(p->tunnel.tun_name, TUN_NAME_MAX_CHARS))
        return keypath_fail_at(kp, "tun_name", "may only contain A-Z a-z 0-9 . _ -");
    json_object *mtu = keypath_member(tun, "mtu");
    if (mtu || json_object_object_get_ex(tun, "mtu", NULL)) {
        if (!mtu || !json_object_is_type(mtu, json_type_int))
            return keypath_fail_at(kp, "mtu", "must be an integer 0 or 576..9000");
        int64_t v = json_object_get_int64(mtu);
        if (v != 0 && (v < 576 || v > 9000))
            return keypath_fail_at(kp, "mtu", "must be 0 or 576..9000");
        p->tunnel.mtu = (uint32_t)v;
    }
    TRY(keypath_uint(kp, tun, "on_demand_idle_s", 0, 86400, &p->tunnel.on_demand_idle_s));
    TRY(read_path(kp, tun, "dns_hook", base, &p->tunnel.dns_hook));
    keypath_pop(kp, mark);
    return 0;
}

/* ------------------------------------------------------------- management */

/* "ID.SECRET": 16 lowercase hex, '.', 43 base64url characters (m2mvpn-admin
 * prints it so). */
static bool token_ok(const char *t)
{
    if (strlen(t) != 16 + 1 + 43 || t[16] != '.')
        return false;
    for (size_t i = 0; i < 16; i++)
        if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f')))
            return false;
    for (const char *c = t + 17; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' ||
              *c == '_'))
            return false;
    return true;
}

static int read_mgmt_key(keypath *kp, json_object *mg, path_base *base, profile *p)
{
    static const char *const keys[] = { "provider", "key", "pin", "pkcs11_module", "pkcs11_uri",
                                        "tpm_key", "tpm_tcti", NULL };
    static const char *const providers[] = { "file", "pkcs11", "tpm" };
    static const profile_cert_source sources[] = { PROFILE_CERT_FILE, PROFILE_CERT_PKCS11, PROFILE_CERT_TPM };
    /* Bit i of keys[] each provider accepts. */
    static const unsigned allowed[] = { 0x07, 0x1d, 0x65 };
    json_object *k;
    TRY(require(kp, mg, "key"));
    TRY(keypath_object(kp, mg, "key", &k));
    size_t mark = keypath_push_key(kp, "key");
    TRY(keypath_check_keys(kp, k, keys));
    TRY(require(kp, k, "provider"));
    int prov = 0;
    TRY(keypath_enum(kp, k, "provider", providers, N_OF(providers), &prov));
    p->mgmt.provider = sources[prov];
    for (size_t i = 0; keys[i]; i++)
        if (!(allowed[prov] & (1u << i)))
            TRY(refuse_if_present(kp, k, keys[i], "management.key.provider", providers[prov]));
    TRY(read_path(kp, k, "key", base, &p->mgmt.key));
    if (p->mgmt.provider == PROFILE_CERT_PKCS11) {
        TRY(require(kp, k, "pkcs11_module"));
        TRY(keypath_string(kp, k, "pkcs11_module", 1, PATH_MAX_CHARS, false, &p->mgmt.pkcs11_module));
        TRY(require(kp, k, "pkcs11_uri"));
        TRY(keypath_string(kp, k, "pkcs11_uri", 8, PATH_MAX_CHARS, false, &p->mgmt.pkcs11_uri));
        if (strncmp(p->mgmt.pkcs11_uri, "pkcs11:", 7) != 0)
            return keypath_fail_at(kp, "pkcs11_uri", "must start with \"pkcs11:\" (RFC 7512)");
        TRY(require(kp, k, "pin"));
    }
    if (p->mgmt.provider == PROFILE_CERT_TPM && json_object_object_get_ex(k, "tpm_key", NULL)) {
        char *given = NULL;
        TRY(keypath_string(kp, k, "tpm_key", 1, PATH_MAX_CHARS, false, &given));
        if (value_looks_like_handle(given)) {
            if (!value_is_tpm_handle(given)) {
                free(given);
                return keypath_fail_at(kp, "tpm_key", "must be a persistent handle 0x81000000..0x81ffffff "
                                                      "or a key file");
            }
            p->mgmt.tpm_key = given;
        } else {
            free(given);
            TRY(read_path(kp, k, "tpm_key", base, &p->mgmt.tpm_key));
        }
    }
    TRY(keypath_string(kp, k, "tpm_tcti", 1, TCTI_MAX_CHARS, false, &p->mgmt.tpm_tcti));
    TRY(keypath_string(kp, k, "pin", 1, PASSWORD_MAX_CHARS, true, &p->mgmt.pin));
    keypath_pop(kp, mark);
    return 0;
}

static int read_management(keypath *kp, json_object *obj, path_base *base, profile *p)
{
    static const char *const keys[] = { "url", "server_ca", "bundle_signer", "enrolment_token", "key",
                                        "poll_s", "installer", "installer_timeout_s", NULL };
    json_object *mg;
    TRY(keypath_object(kp, obj, "management", &mg));
    if (!mg)
        return 0;
    p->mgmt.on = true;
    p->mgmt.poll_s = 300;
    size_t mark = keypath_push_key(kp, "management");
    TRY(keypath_check_keys(kp, mg, keys));
    TRY(require(kp, mg, "url"));
    TRY(keypath_string(kp, mg, "url", 9, 2048, false, &p->mgmt.url));
    size_t ul = strlen(p->mgmt.url);
    if (strncmp(p->mgmt.url, "https://", 8) != 0 || strpbrk(p->mgmt.url, " \t\r\n?#"))
        return keypath_fail_at(kp, "url", "must be an https:// URL without spaces, query or fragment");
    while (ul > 8 && p->mgmt.url[ul - 1] == '/')
        p->mgmt.url[--ul] = '\0';
    TRY(require(kp, mg, "server_ca"));
    TRY(read_path(kp, mg, "server_ca", base, &p->mgmt.server_ca));
    TRY(require(kp, mg, "bundle_signer"));
    TRY(read_path(kp, mg, "bundle_signer", base, &p->mgmt.bundle_signer));
    TRY(require(kp, mg, "enrolment_token"));
    TRY(keypath_string(kp, mg, "enrolment_token", 1, 128, true, &p->mgmt.token));
    if (!token_ok(p->mgmt.token))
        return keypath_fail_at(kp, "enrolment_token", "must be the token as m2mvpn-admin prints it "
                                                      "(16 hex digits, '.', 43 characters)");
    TRY(read_mgmt_key(kp, mg, base, p));
    TRY(keypath_uint(kp, mg, "poll_s", 10, 86400, &p->mgmt.poll_s));
    /* The installer runs as the engine does (root, often): only a program
     * named by the device's own bootstrap, never by the server (a
     * delivered profile has no "management"), checked here once. */
    TRY(keypath_string(kp, mg, "installer", 2, PATH_MAX_CHARS, false, &p->mgmt.installer));
    if (p->mgmt.installer) {
        struct stat st;
        if (p->mgmt.installer[0] != '/')
            return keypath_fail_at(kp, "installer", "must be an absolute path");
        if (stat(p->mgmt.installer, &st) < 0)
            return keypath_fail_at(kp, "installer", "must name an executable file (%s)", strerror(errno));
        if (!S_ISREG(st.st_mode))
            return keypath_fail_at(kp, "installer", "must name an executable file (not a regular file)");
        if (access(p->mgmt.installer, X_OK) < 0)
            return keypath_fail_at(kp, "installer", "must name an executable file (%s)", strerror(errno));
    }
    p->mgmt.installer_timeout_s = 900;
    TRY(keypath_uint(kp, mg, "installer_timeout_s", 10, 86400, &p->mgmt.installer_timeout_s));
    keypath_pop(kp, mark);
    return 0;
}

/* ----------------------------------------------------------------- profile */

static void set_defaults(profile *p)
{
    p->mode = PROFILE_MODE_ALWAYS_ON;
    p->ike.lifetime_s = 14400;
    p->ike.dpd_s = 30;
    p->ike.fragmentation = true;
    p->ike.mobike = true;
    p->ike.nat_keepalive_s = 20;
    p->ike.retransmit_timeout_s = 4.0;
    p->ike.retransmit_base = 1.8;
    p->ike.retransmit_tries = 5;
    p->ike.force_encap = false;
    p->esp.lifetime_s = 3600;
    p->esp.replay_window = 1024;
    p->esp.batch = 32;
    p->tunnel.request_vip = true;
    p->tunnel.dns = true;
    p->tunnel.kill_switch = true;
    p->tunnel.mtu = 0;
    p->tunnel.on_demand_idle_s = 300;
}

/* Defaults that need memory or parsing: filled in only where the profile
 * left them out. */
static int fill_late_defaults(profile *p)
{
    if (p->ike.n_proposals == 0) {
        if (proposal_parse(DEFAULT_IKE_PROPOSAL, PROPOSAL_IKE, &p->ike.proposals[0], NULL, 0) < 0)
            return M2MVPN_E_PROFILE;
        p->ike.n_proposals = 1;
    }
    if (p->esp.n_proposals == 0) {
        if (proposal_parse(DEFAULT_ESP_PROPOSAL, PROPOSAL_ESP, &p->esp.proposals[0], NULL, 0) < 0)
            return M2MVPN_E_PROFILE;
        p->esp.n_proposals = 1;
    }
    if (p->tunnel.n_remote_ts == 0) {
        profile_ts *ts = &p->tunnel.remote_ts[0];
        memset(ts, 0, sizeof(*ts));
        ts->family = AF_INET; /* 0.0.0.0/0 */
        p->tunnel.n_remote_ts = 1;
    }
    int other = implied_family(p);
    if (other && p->tunnel.n_remote_ts < PROFILE_MAX_TS) { /* room: checked in read_tunnel */
        profile_ts *ts = &p->tunnel.remote_ts[p->tunnel.n_remote_ts++];
        memset(ts, 0, sizeof(*ts));
        ts->family = other; /* ::/0 or 0.0.0.0/0 */
        p->tunnel.implied_family = other;
    }
    if (!p->tunnel.tun_name && !(p->tunnel.tun_name = strdup("m2m0")))
        return M2MVPN_E_NOMEM;
    if (!p->local_id && p->auth == PROFILE_AUTH_EAP && !(p->local_id = strdup(p->eap.identity)))
        return M2MVPN_E_NOMEM;
    return 0;
}

int profile_read_version(keypath *kp, json_object *obj, bool required)
{
    json_object *v = keypath_member(obj, "version");
    bool present = json_object_object_get_ex(obj, "version", NULL);
    if (!present)
        return required ? keypath_fail_at(kp, "version", "required") : 0;
    if (!v || !json_object_is_type(v, json_type_int) || json_object_get_int64(v) != 1)
        return keypath_fail_at(kp, "version", "must be 1");
    return 0;
}

static int read_identity_and_name(keypath *kp, json_object *obj, profile *p)
{
    TRY(require(kp, obj, "name"));
    TRY(keypath_string(kp, obj, "name", 1, NAME_MAX_CHARS, false, &p->name));
    if (!value_is_plain_name(p->name, NAME_MAX_CHARS))
        return keypath_fail_at(kp, "name", "may only contain A-Z a-z 0-9 . _ -");
    int mode = (int)p->mode;
    TRY(keypath_enum(kp, obj, "mode", mode_names, N_OF(mode_names), &mode));
    p->mode = (profile_mode)mode;
    return 0;
}

int profile_read(keypath *kp, json_object *obj, path_base *base, bool version_required, profile *out)
{
    static const char *const keys[] = { "version", "name", "mode", "gateways", "local_id", "remote_id",
                                        "auth", "ca", "ike", "esp", "tunnel", "management", NULL };
    if (!json_object_is_type(obj, json_type_object))
        return keypath_fail(kp, "must be an object");
    set_defaults(out);
    TRY(keypath_check_keys(kp, obj, keys));
    TRY(profile_read_version(kp, obj, version_required));
    TRY(read_identity_and_name(kp, obj, out));
    TRY(read_management(kp, obj, base, out));
    /* A bootstrap may lack the tunnel's keys until its profile arrives. */
    bool bootstrap = out->mgmt.on;
    if (!bootstrap || json_object_object_get_ex(obj, "gateways", NULL))
        TRY(read_gateways(kp, obj, out));
    TRY(keypath_string(kp, obj, "local_id", 1, ID_MAX_CHARS, false, &out->local_id));
    if (!bootstrap)
        TRY(require(kp, obj, "remote_id"));
    TRY(keypath_string(kp, obj, "remote_id", 1, ID_MAX_CHARS, false, &out->remote_id));
    if (!bootstrap || json_object_object_get_ex(obj, "auth", NULL))
        TRY(read_auth(kp, obj, base, out));
    if (out->auth == PROFILE_AUTH_PSK && !out->local_id && (!bootstrap || json_object_object_get_ex(obj, "auth", NULL)))
        return keypath_fail_at(kp, "local_id", "required when auth.method is \"psk\"");
    TRY(read_ca(kp, obj, base, out));
    TRY(read_ike(kp, obj, out));
    TRY(read_esp(kp, obj, out));
    TRY(read_tunnel(kp, obj, base, out));
    return fill_late_defaults(out);
}

void profile_clear(profile *p)
{
    free(p->name);
    for (size_t i = 0; i < p->n_gateways && i < PROFILE_MAX_GATEWAYS; i++)
        free(p->gateways[i].host);
    free(p->local_id);
    free(p->remote_id);
    secure_free_str(p->psk);
    free(p->eap.type);
    free(p->eap.identity);
    secure_free_str(p->eap.password);
    free(p->cert.file);
    free(p->cert.key);
    secure_free_str(p->cert.pin);
    free(p->cert.pkcs11_module);
    free(p->cert.pkcs11_uri);
    free(p->cert.tpm_key);
    free(p->cert.tpm_tcti);
    free(p->cert.bind_sources);
    for (size_t i = 0; i < p->n_ca && i < PROFILE_MAX_CA; i++)
        free(p->ca[i]);
    free(p->tunnel.tun_name);
    free(p->tunnel.dns_hook);
    free(p->mgmt.url);
    free(p->mgmt.server_ca);
    free(p->mgmt.bundle_signer);
    free(p->mgmt.installer);
    secure_free_str(p->mgmt.token);
    free(p->mgmt.key);
    free(p->mgmt.pkcs11_module);
    free(p->mgmt.pkcs11_uri);
    free(p->mgmt.tpm_key);
    free(p->mgmt.tpm_tcti);
    secure_free_str(p->mgmt.pin);
    secure_wipe(p, sizeof(*p));
}
