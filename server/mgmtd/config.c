/* SPDX-License-Identifier: Apache-2.0 */
/* m2mvpn-mgmtd's configuration file (JSON): every key known, typed and
 * checked; an error names the key. Relative paths resolve against the
 * file's folder. */
#include <errno.h>
#include <json-c/json.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgmtd.h"

static char *resolve(const char *base_dir, const char *p)
{
    char *out;
    if (p[0] == '/' || !base_dir)
        return strdup(p);
    if (asprintf(&out, "%s/%s", base_dir, p) < 0)
        return NULL;
    return out;
}

/* "file:PATH" with PATH resolved; other schemes (an HSM URI later) kept as they are. */
static char *resolve_key_location(const char *base_dir, const char *loc)
{
    if (strncmp(loc, "file:", 5))
        return strdup(loc);
    char *p = resolve(base_dir, loc + 5), *out = NULL;
    if (p && asprintf(&out, "file:%s", p) < 0)
        out = NULL;
    free(p);
    return out;
}

static int parse_addr(const char *key, char **host_out, int *port_out, const char *v, char *err, size_t errlen)
{
    const char *colon = strrchr(v, ':');
    const char *host = v;
    size_t hlen = colon ? (size_t)(colon - v) : 0;
    if (colon && v[0] == '[') {
        if (hlen < 2 || v[hlen - 1] != ']')
            colon = NULL;
        host = v + 1;
        hlen -= 2;
    }
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || hlen == 0 || !colon[1] || *end || port < 0 || port > 65535) {
        snprintf(err, errlen, "config key \"%s\": expected \"ADDRESS:PORT\" (\"[IPv6]:PORT\"), got \"%s\"", key, v);
        return -1;
    }
    *host_out = strndup(host, hlen);
    *port_out = (int)port;
    return *host_out ? 0 : -1;
}

static int parse_listen(mgmtd_config *c, const char *v, char *err, size_t errlen)
{
    return parse_addr("listen", &c->listen_host, &c->listen_port, v, err, errlen);
}

static int hex32(unsigned char out[32], const char *h)
{
    if (strlen(h) != 64)
        return -1;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdefABCDEF", h[2 * i]) ||
            !strchr("0123456789abcdefABCDEF", h[2 * i + 1]))
            return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

int mgmtd_config_load(mgmtd_config *c, const char *path, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    c->cert_days = 365;
    c->crl_next_update_s = 3600;
    c->poll_s = 300;
    c->artifact_max_bytes = MGMTD_ARTIFACT_MAX_DEFAULT;
    c->max_connections = MGMTD_MAX_CONNECTIONS_DEFAULT;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "config %s: %s", path, strerror(errno));
        return -1;
    }
    char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    int toolong = !feof(f);
    fclose(f);
    if (toolong) {
        snprintf(err, errlen, "config %s: larger than 64 KiB", path);
        return -1;
    }
    buf[n] = 0;
    enum json_tokener_error jerr;
    json_object *root = json_tokener_parse_verbose(buf, &jerr);
    if (!root || !json_object_is_type(root, json_type_object)) {
        snprintf(err, errlen, "config %s: not a JSON object (%s)", path,
                 root ? "another JSON type" : json_tokener_error_desc(jerr));
        json_object_put(root);
        return -1;
    }
    char *dir = strdup(path), *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    const char *base = slash ? (dir[0] ? dir : "/") : NULL;

    static const struct {
        const char *key;
        int kind;            /* 0 string, 1 path, 2 key location, 3 database, 4 int, 5 listen, 6 sha256,
                                7 crl_listen, 8 crl_next_update_s, 9 http(s) URL,
                                10 cert_lifetime_s */
        int required;
        size_t off;
    } keys[] = {
        {"listen", 5, 1, 0},
        {"tls_cert", 1, 1, offsetof(mgmtd_config, tls_cert)},
        {"tls_key", 1, 1, offsetof(mgmtd_config, tls_key)},
        {"device_ca_cert", 1, 1, offsetof(mgmtd_config, device_ca_cert)},
        {"device_ca_key", 2, 1, offsetof(mgmtd_config, device_ca_key)},
        {"bundle_signer_cert", 1, 1, offsetof(mgmtd_config, bundle_signer_cert)},
        {"bundle_signer_key", 2, 1, offsetof(mgmtd_config, bundle_signer_key)},
        {"token_key", 1, 1, offsetof(mgmtd_config, token_key)},
        {"admin_token_sha256", 6, 1, 0},
        {"database", 3, 1, offsetof(mgmtd_config, database)},
        {"cert_days", 4, 0, 0},
        {"cert_lifetime_s", 10, 0, 0},
        {"org", 0, 0, offsetof(mgmtd_config, org)},
        {"crl_listen", 7, 0, 0},
        {"crl_url", 9, 0, offsetof(mgmtd_config, crl_url)},
        {"crl_next_update_s", 8, 0, 0},
        {"poll_s", 4, 0, 0},
        {"artifact_max_bytes", 4, 0, 0},
        {"max_connections", 8, 0, 0},
        {"state_dir", 1, 0, offsetof(mgmtd_config, state_dir)},
    };
    int rc = 0;
    json_object_object_foreach(root, k, v0) {
        (void)v0;
        size_t i;
        for (i = 0; i < sizeof(keys) / sizeof(keys[0]) && strcmp(keys[i].key, k); i++)
            ;
        if (i == sizeof(keys) / sizeof(keys[0])) {
            snprintf(err, errlen, "config %s: unknown key \"%s\"", path, k);
            rc = -1;
            goto out;
        }
    }
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_object *v;
        if (!json_object_object_get_ex(root, keys[i].key, &v)) {
            if (keys[i].required) {
                snprintf(err, errlen, "config %s: missing key \"%s\"", path, keys[i].key);
                rc = -1;
                goto out;
            }
            continue;
        }
        if (keys[i].kind == 10) {
            int64_t d = json_object_get_int64(v);
            if (!json_object_is_type(v, json_type_int) || d < 60 || d > 3650LL * 86400) {
                snprintf(err, errlen, "config %s: key \"%s\": expected a whole number of seconds, 60 to %lld",
                         path, keys[i].key, 3650LL * 86400);
                rc = -1;
                goto out;
            }
            c->cert_lifetime_s = d;
            continue;
        }
        if (keys[i].kind == 4 && strcmp(keys[i].key, "cert_days")) {
            int poll = !strcmp(keys[i].key, "poll_s");
            int64_t d = json_object_get_int64(v), lo = poll ? 5 : 1024, hi = poll ? 86400 : (16LL << 30);
            if (!json_object_is_type(v, json_type_int) || d < lo || d > hi) {
                snprintf(err, errlen, "config %s: key \"%s\": expected a whole number, %lld to %lld%s", path,
                         keys[i].key, (long long)lo, (long long)hi, poll ? " (seconds)" : " (bytes)");
                rc = -1;
                goto out;
            }
            if (poll)
                c->poll_s = (int)d;
            else
                c->artifact_max_bytes = d;
            continue;
        }
        if (keys[i].kind == 4) {
            int64_t d = json_object_get_int64(v);
            if (!json_object_is_type(v, json_type_int) || d < 1 || d > 3650) {
                snprintf(err, errlen, "config %s: key \"%s\": expected a whole number of days, 1 to 3650",
                         path, keys[i].key);
                rc = -1;
                goto out;
            }
            c->cert_days = (int)d;
            continue;
        }
        if (keys[i].kind == 8 && !strcmp(keys[i].key, "max_connections")) {
            int64_t d = json_object_get_int64(v);
            if (!json_object_is_type(v, json_type_int) || d < 1 || d > 65536) {
                snprintf(err, errlen, "config %s: key \"%s\": expected a whole number of connections, 1 to 65536",
                         path, keys[i].key);
                rc = -1;
                goto out;
            }
            c->max_connections = (int)d;
            continue;
        }
        if (keys[i].kind == 8) {
            int64_t d = json_object_get_int64(v);
            if (!json_object_is_type(v, json_type_int) || d < 1 || d > 30 * 86400) {
                snprintf(err, errlen, "config %s: key \"%s\": expected a whole number of seconds, 1 to 2592000",
                         path, keys[i].key);
                rc = -1;
                goto out;
            }
            c->crl_next_update_s = (int)d;
            continue;
        }
        const char *s = json_object_get_string(v);
        if (!json_object_is_type(v, json_type_string) || !*s) {
            snprintf(err, errlen, "config %s: key \"%s\": expected a non-empty string", path, keys[i].key);
            rc = -1;
            goto out;
        }
        char **slot = (char **)((char *)c + keys[i].off);
        switch (keys[i].kind) {
        case 0:
            *slot = strdup(s);
            break;
        case 1:
            *slot = resolve(base, s);
            break;
        case 2:
            if (!strstr(s, ":")) {
                snprintf(err, errlen, "config %s: key \"%s\": expected a key location such as \"file:ca.key\"",
                         path, keys[i].key);
                rc = -1;
                goto out;
            }
            *slot = resolve_key_location(base, s);
            break;
        case 3:
            if (!strncmp(s, "sqlite:", 7) && s[7]) {
                char *p = resolve(base, s + 7);
                if (p && asprintf(slot, "sqlite:%s", p) < 0)
                    *slot = NULL;
                free(p);
            } else {
                *slot = strdup(s);
            }
            break;
        case 5:
            if (parse_listen(c, s, err, errlen) < 0) {
                rc = -1;
                goto out;
            }
            continue;
        case 7:
            if (parse_addr("crl_listen", &c->crl_listen_host, &c->crl_listen_port, s, err, errlen) < 0) {
                rc = -1;
                goto out;
            }
            continue;
        case 9:
            if ((strncmp(s, "http://", 7) && strncmp(s, "https://", 8)) || strlen(s) > 500 || strpbrk(s, " \t\r\n,")) {
                snprintf(err, errlen, "config %s: key \"%s\": expected an http:// or https:// URL "
                         "(no spaces or commas, at most 500 characters)", path, keys[i].key);
                rc = -1;
                goto out;
            }
            *slot = strdup(s);
            break;
        case 6:
            if (hex32(c->admin_token_sha256, s) < 0) {
                snprintf(err, errlen, "config %s: key \"admin_token_sha256\": expected 64 hex digits "
                         "(the SHA-256 of the admin token)", path);
                rc = -1;
                goto out;
            }
            continue;
        }
        if (!*slot) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
            goto out;
        }
    }
    if (!c->org)
        c->org = strdup("m2mvpn");
    if (!c->state_dir)   /* default: the config file's folder */
        c->state_dir = strdup(base ? base : ".");
out:
    json_object_put(root);
    free(dir);
    if (rc < 0)
        mgmtd_config_free(c);
    return rc;
}

void mgmtd_config_free(mgmtd_config *c)
{
    free(c->listen_host);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->device_ca_cert);
    free(c->device_ca_key);
    free(c->bundle_signer_cert);
    free(c->bundle_signer_key);
    free(c->token_key);
    free(c->database);
    free(c->org);
    free(c->crl_listen_host);
    free(c->crl_url);
    free(c->state_dir);
    memset(c, 0, sizeof(*c));
}
