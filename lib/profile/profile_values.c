/* SPDX-License-Identifier: Apache-2.0 */
#include "profile_values.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

void path_base_release(path_base *b)
{
    free(b->abs);
    b->abs = NULL;
}

static int make_abs_base(path_base *b, char *why, size_t why_len)
{
    if (b->abs)
        return 0;
    if (b->given && b->given[0] == '/') {
        b->abs = strdup(b->given);
        return b->abs ? 0 : M2MVPN_E_NOMEM;
    }
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd))) {
        snprintf(why, why_len, "cannot find the current directory: %s", strerror(errno));
        return M2MVPN_E_IO;
    }
    const char *rel = b->given && b->given[0] ? b->given : NULL;
    size_t n = strlen(cwd) + (rel ? strlen(rel) + 1 : 0) + 1;
    b->abs = malloc(n);
    if (!b->abs)
        return M2MVPN_E_NOMEM;
    size_t cwd_len = strlen(cwd);
    memcpy(b->abs, cwd, cwd_len + 1);
    if (rel) {
        if (strcmp(cwd, "/") != 0)
            b->abs[cwd_len++] = '/';
        memcpy(b->abs + cwd_len, rel, strlen(rel) + 1);
    }
    return 0;
}

int path_resolve(path_base *b, const char *path, char **out, char *why, size_t why_len)
{
    char *res;
    if (path[0] == '/') {
        if (strlen(path) >= PATH_MAX) {
            snprintf(why, why_len, "path too long");
            return M2MVPN_E_PROFILE;
        }
        res = strdup(path);
    } else {
        int r = make_abs_base(b, why, why_len);
        if (r < 0)
            return r;
        while (path[0] == '.' && path[1] == '/') {
            path += 2;
            while (path[0] == '/')
                path++;
        }
        size_t base_len = strlen(b->abs);
        while (base_len > 1 && b->abs[base_len - 1] == '/')
            base_len--;
        bool root = base_len == 1 && b->abs[0] == '/';
        size_t n = base_len + (root ? 0 : 1) + strlen(path) + 1;
        if (n > PATH_MAX) {
            snprintf(why, why_len, "path too long");
            return M2MVPN_E_PROFILE;
        }
        res = malloc(n);
        if (res) {
            char *w = res;
            memcpy(w, b->abs, base_len);
            w += base_len;
            if (!root)
                *w++ = '/';
            memcpy(w, path, strlen(path) + 1);
        }
    }
    if (!res)
        return M2MVPN_E_NOMEM;
    *out = res;
    return 0;
}

static bool is_alnum(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool value_is_plain_name(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return false;
    return true;
}

bool value_is_host(const char *s)
{
    unsigned char addr[16];
    if (inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1)
        return true;
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (is_alnum(c) || c == '-' || c == '_') {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return true; /* a last empty label is the one trailing dot */
}

bool value_looks_like_handle(const char *s)
{
    return s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
}

bool value_is_tpm_handle(const char *s)
{
    if (!value_looks_like_handle(s) || strlen(s) != 10)
        return false;
    unsigned long v = 0;
    for (size_t i = 2; i < 10; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return false;
        v = v * 16 + (unsigned long)d;
    }
    /* TPM 2.0 persistent object handles (TPM2 Part 2, handle type 0x81). */
    return v >= 0x81000000ul && v <= 0x81fffffful;
}

bool value_is_pkcs12_name(const char *s)
{
    size_t n = strlen(s);
    return n >= 4 && (strcasecmp(s + n - 4, ".p12") == 0 || strcasecmp(s + n - 4, ".pfx") == 0);
}

prefix_fault value_parse_prefix(const char *s, profile_ts *out, char *suggest, size_t suggest_len)
{
    char addr_text[INET6_ADDRSTRLEN];
    const char *slash = strchr(s, '/');
    size_t addr_len = slash ? (size_t)(slash - s) : strlen(s);
    if (addr_len == 0 || addr_len >= sizeof(addr_text))
        return PREFIX_MALFORMED;
    memcpy(addr_text, s, addr_len);
    addr_text[addr_len] = '\0';

    profile_ts ts;
    memset(&ts, 0, sizeof(ts));
    ts.family = strchr(addr_text, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(ts.family, addr_text, ts.addr) != 1)
        return PREFIX_MALFORMED;
    unsigned max_len = ts.family == AF_INET ? 32 : 128;

    unsigned plen = max_len;
    if (slash) {
        const char *d = slash + 1;
        size_t nd = strlen(d);
        if (nd == 0 || nd > 3)
            return PREFIX_MALFORMED;
        plen = 0;
        for (size_t i = 0; i < nd; i++) {
            if (d[i] < '0' || d[i] > '9')
                return PREFIX_MALFORMED;
            plen = plen * 10 + (unsigned)(d[i] - '0');
        }
        if (plen > max_len)
            return PREFIX_MALFORMED;
    }
    ts.prefix_len = (uint8_t)plen;

    uint8_t masked[16];
    memcpy(masked, ts.addr, sizeof(masked));
    for (unsigned bit = plen; bit < max_len; bit++)
        masked[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
    if (memcmp(masked, ts.addr, max_len / 8) != 0) {
        char text[INET6_ADDRSTRLEN];
        if (inet_ntop(ts.family, masked, text, sizeof(text)))
            snprintf(suggest, suggest_len, "%s/%u", text, plen);
        else if (suggest_len)
            suggest[0] = '\0';
        return PREFIX_HOST_BITS;
    }
    *out = ts;
    return PREFIX_OK;
}
