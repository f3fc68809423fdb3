/* SPDX-License-Identifier: Apache-2.0 */
/* Control protocol codec: see control.h and docs/cli.md. */
#include <stdio.h>
#include <string.h>

#include "control.h"

static const struct {
    const char *word;
    size_t min_args, max_args;
} cmd_table[CTL_CMD_COUNT_] = {
    [CTL_CMD_STATUS] = { "status", 0, 0 },
    [CTL_CMD_CONNECT] = { "connect", 0, 1 },
    [CTL_CMD_DISCONNECT] = { "disconnect", 0, 0 },
    [CTL_CMD_SWITCH] = { "switch", 1, 1 },
    [CTL_CMD_LOGIN] = { "login", 2, 2 },
    [CTL_CMD_PIN] = { "pin", 1, 1 },
    [CTL_CMD_STOP] = { "stop", 0, 0 },
    [CTL_CMD_UNLOAD] = { "unload", 1, 1 },
    [CTL_CMD_DECOMMISSION] = { "decommission", 0, 0 },
};

const char *ctl_cmd_name(ctl_cmd cmd)
{
    if ((unsigned)cmd < CTL_CMD_COUNT_)
        return cmd_table[cmd].word;
    return "unknown";
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A byte that may appear as itself in an encoded argument. */
static int is_plain(unsigned char c)
{
    return c >= 0x21 && c <= 0x7e && c != '%';
}

/* Decode one argument token [p, p+n) into out (CTL_MAX_ARG + 1 bytes). */
static int decode_arg(const char *p, size_t n, char *out, size_t *out_len,
                      size_t index, char *err, size_t err_len)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (o == CTL_MAX_ARG) {
            snprintf(err, err_len, "argument %zu is longer than %d bytes", index + 1, CTL_MAX_ARG);
            return -1;
        }
        if (c == '%') {
            if (n - i < 3 || hex_value(p[i + 1]) < 0 || hex_value(p[i + 2]) < 0) {
                snprintf(err, err_len, "argument %zu has a malformed %%-escape", index + 1);
                return -1;
            }
            unsigned char v = (unsigned char)(hex_value(p[i + 1]) * 16 + hex_value(p[i + 2]));
            if (v == 0) {
                snprintf(err, err_len, "argument %zu contains a NUL byte", index + 1);
                return -1;
            }
            out[o++] = (char)v;
            i += 2;
        } else if (is_plain(c)) {
            out[o++] = (char)c;
        } else {
            snprintf(err, err_len, "argument %zu contains a byte that must be %%-escaped", index + 1);
            return -1;
        }
    }
    out[o] = '\0';
    *out_len = o;
    return 0;
}

int ctl_request_parse(const char *line, size_t len, ctl_request *req,
                      char *err, size_t err_len)
{
    req->argc = 0;
    if (len == 0) {
        snprintf(err, err_len, "empty request");
        return -1;
    }
    if (len > CTL_MAX_LINE) {
        snprintf(err, err_len, "request longer than %d bytes", CTL_MAX_LINE);
        return -1;
    }
    /* Split on single spaces: tokens[0] is the command word. */
    const char *tok[CTL_MAX_ARGS + 1];
    size_t tok_len[CTL_MAX_ARGS + 1];
    size_t ntok = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && line[i] != ' ')
            continue;
        if (i == start) {
            snprintf(err, err_len, "empty field (leading, trailing or double space)");
            return -1;
        }
        if (ntok == CTL_MAX_ARGS + 1) {
            snprintf(err, err_len, "too many arguments");
            return -1;
        }
        tok[ntok] = line + start;
        tok_len[ntok] = i - start;
        ntok++;
        start = i + 1;
    }

    size_t found = CTL_CMD_COUNT_;
    for (size_t c = 0; c < CTL_CMD_COUNT_; c++) {
        if (strlen(cmd_table[c].word) == tok_len[0] &&
            memcmp(cmd_table[c].word, tok[0], tok_len[0]) == 0)
            found = c;
    }
    if (found == CTL_CMD_COUNT_) {
        snprintf(err, err_len, "unknown command");
        return -1;
    }
    size_t argc = ntok - 1;
    if (argc < cmd_table[found].min_args || argc > cmd_table[found].max_args) {
        snprintf(err, err_len, "'%s' takes %zu..%zu arguments, got %zu", cmd_table[found].word,
                 cmd_table[found].min_args, cmd_table[found].max_args, argc);
        return -1;
    }
    req->cmd = (ctl_cmd)found;
    for (size_t a = 0; a < argc; a++) {
        if (decode_arg(tok[a + 1], tok_len[a + 1], req->args[a], &req->arg_len[a], a, err, err_len) < 0)
            return -1;
    }
    req->argc = argc;
    return 0;
}

int ctl_request_format(ctl_cmd cmd, const char *const *args, size_t argc,
                       char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    if ((unsigned)cmd >= CTL_CMD_COUNT_ || argc < cmd_table[cmd].min_args ||
        argc > cmd_table[cmd].max_args || cap == 0)
        return -1;
    size_t o = 0;
    const char *word = cmd_table[cmd].word;
    size_t wl = strlen(word);
    if (wl >= cap)
        return -1;
    memcpy(out, word, wl);
    o = wl;
    for (size_t a = 0; a < argc; a++) {
        size_t al = strlen(args[a]);
        if (al == 0 || al > CTL_MAX_ARG)
            return -1;
        if (o + 1 >= cap)
            return -1;
        out[o++] = ' ';
        for (size_t i = 0; i < al; i++) {
            unsigned char c = (unsigned char)args[a][i];
            if (is_plain(c)) {
                if (o + 1 >= cap)
                    return -1;
                out[o++] = (char)c;
            } else {
                if (o + 3 >= cap)
                    return -1;
                out[o++] = '%';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
            }
        }
    }
    if (o > CTL_MAX_LINE || o + 2 > cap)
        return -1;
    out[o++] = '\n';
    out[o] = '\0';
    return (int)o;
}

void ctl_request_wipe(ctl_request *req)
{
    explicit_bzero(req, sizeof(*req));
}
