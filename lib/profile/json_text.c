/* SPDX-License-Identifier: Apache-2.0 */
#include "json_text.h"

#include <m2mvpn/m2mvpn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"

/* json-c's own default nesting limit; profiles need 5 levels. */
#define JSON_TEXT_MAX_DEPTH 32
/* The widest profile object has about 15 keys; far more is a broken file,
 * and the limit keeps duplicate detection linear in practice. */
#define JSON_TEXT_MAX_KEYS 64

typedef struct key_span {
    size_t off, len; /* raw (still escaped) key text between the quotes */
} key_span;

typedef struct scan_frame {
    bool is_object;
    bool expect_key; /* next string in this object is a key */
    size_t n_keys;
    key_span keys[JSON_TEXT_MAX_KEYS];
} scan_frame;

typedef struct scan_state {
    char *text;          /* the copy being scanned; comments are blanked */
    size_t len;
    scan_frame *frames;  /* JSON_TEXT_MAX_DEPTH of them */
    size_t depth;
    bool tracking;       /* false once the structure is beyond the limits */
    /* A fault only reported if json-c accepts the text (the structure is
     * only known to be right then): a repeated key or too many keys. */
    const char *late_fault;
    size_t late_off;
} scan_state;

static void position_of(const char *text, size_t len, size_t off, unsigned *line, unsigned *col)
{
    unsigned l = 1;
    size_t line_start = 0;
    if (off > len)
        off = len;
    for (size_t i = 0; i < off; i++)
        if (text[i] == '\n') {
            l++;
            line_start = i + 1;
        }
    *line = l;
    *col = (unsigned)(off - line_start + 1);
}

static int fail_at(const char *text, size_t len, size_t off, const char *what, char *err, size_t err_len)
{
    unsigned line, col;
    position_of(text, len, off, &line, &col);
    if (err && err_len)
        snprintf(err, err_len, "line %u, column %u: %s", line, col, what);
    return M2MVPN_E_JSON;
}

static void open_container(scan_state *st, bool is_object)
{
    if (!st->tracking)
        return;
    if (st->depth >= JSON_TEXT_MAX_DEPTH) {
        st->tracking = false; /* json-c refuses this depth itself */
        return;
    }
    scan_frame *f = &st->frames[st->depth++];
    f->is_object = is_object;
    f->expect_key = is_object;
    f->n_keys = 0;
}

static void close_container(scan_state *st)
{
    if (st->tracking && st->depth > 0)
        st->depth--;
}

static void saw_comma(scan_state *st)
{
    if (st->tracking && st->depth > 0 && st->frames[st->depth - 1].is_object)
        st->frames[st->depth - 1].expect_key = true;
}

/* A string ended; if it is a key, look for the same key earlier in its object. */
static void saw_string(scan_state *st, size_t off, size_t len)
{
    if (!st->tracking || st->depth == 0)
        return;
    scan_frame *f = &st->frames[st->depth - 1];
    if (!f->is_object || !f->expect_key)
        return;
    f->expect_key = false;
    if (st->late_fault)
        return;
    /* Keys are compared as written, so an escape could hide a repeated key
     * ("\u0070sk" is "psk"); no profile key needs one. */
    if (memchr(st->text + off, '\\', len)) {
        st->late_fault = "escape sequence in a key (profile keys are plain names)";
        st->late_off = off - 1;
        return;
    }
    for (size_t i = 0; i < f->n_keys; i++)
        if (f->keys[i].len == len && memcmp(st->text + f->keys[i].off, st->text + off, len) == 0) {
            st->late_fault = "key appears twice in the same object";
            st->late_off = off - 1;
            return;
        }
    if (f->n_keys == JSON_TEXT_MAX_KEYS) {
        st->late_fault = "more than 64 keys in one object";
        st->late_off = off - 1;
        return;
    }
    f->keys[f->n_keys++] = (key_span){ off, len };
}

/* Blank a comment starting at text[i] ('/' then '/' or '*'); returns the
 * offset after it, or 0 with *unterminated set. Line breaks are kept. */
static size_t blank_comment(char *text, size_t len, size_t i, bool *unterminated)
{
    bool block = text[i + 1] == '*';
    size_t j = i + 2;
    text[i] = text[i + 1] = ' ';
    for (; j < len; j++) {
        if (!block && text[j] == '\n')
            return j;
        if (block && text[j] == '*' && j + 1 < len && text[j + 1] == '/') {
            text[j] = text[j + 1] = ' ';
            return j + 2;
        }
        if (text[j] != '\n')
            text[j] = ' ';
    }
    if (block)
        *unterminated = true;
    return len;
}

/* Returns the offset after the closing quote of a string starting at
 * text[i] == '"', or len if it never closes (json-c reports that). */
static size_t scan_string(scan_state *st, size_t i, const char **fault, size_t *fault_off)
{
    size_t start = i + 1;
    for (size_t j = start; j < st->len; j++) {
        unsigned char c = (unsigned char)st->text[j];
        if (c == '\\') {
            j++;
        } else if (c == '"') {
            saw_string(st, start, j - start);
            return j + 1;
        } else if (c < 0x20) {
            *fault = c ? "control character in string (escape it)" : "NUL byte in input";
            *fault_off = j;
            return st->len;
        }
    }
    return st->len;
}

static int scan_text(scan_state *st, char *err, size_t err_len)
{
    const char *fault = NULL;
    size_t fault_off = 0;
    size_t i = 0;
    while (i < st->len && !fault) {
        char c = st->text[i];
        switch (c) {
        case '"':
            i = scan_string(st, i, &fault, &fault_off);
            continue;
        case '/':
            if (i + 1 < st->len && (st->text[i + 1] == '/' || st->text[i + 1] == '*')) {
                bool unterminated = false;
                size_t next = blank_comment(st->text, st->len, i, &unterminated);
                if (unterminated) {
                    fault = "comment not closed";
                    fault_off = i;
                }
                i = next;
                continue;
            }
            break;
        case '\'':
            fault = "strings must be in double quotes";
            fault_off = i;
            break;
        case '\0':
            fault = "NUL byte in input";
            fault_off = i;
            break;
        case '{': open_container(st, true); break;
        case '[': open_container(st, false); break;
        case '}': case ']': close_container(st); break;
        case ',': saw_comma(st); break;
        default: break;
        }
        i++;
    }
    if (fault)
        return fail_at(st->text, st->len, fault_off, fault, err, err_len);
    return 0;
}

static bool only_space_from(const char *text, size_t len, size_t off)
{
    for (size_t i = off; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r')
            return false;
    return true;
}

/* json-c keeps the text of the last token (a secret, maybe) in its print
 * buffer; grow that buffer once to the input size so it is never realloc'd
 * (which would leave copies in freed memory), and wipe it at the end. */
static bool presize_token_buffer(struct json_tokener *tok, size_t len)
{
    if (printbuf_memset(tok->pb, 0, 0, (int)len + 1) < 0)
        return false;
    printbuf_reset(tok->pb);
    return true;
}

static void wipe_strings(json_object *o);

/* After a syntax error json-c still holds the values parsed so far (a PSK,
 * maybe) on its stack and frees them in json_tokener_free(); wipe them first.
 * This reads json-c's published tokener struct (json-c 0.13..0.17). */
static void free_tokener(struct json_tokener *tok)
{
    for (int i = 0; tok->stack && i <= tok->depth && i < tok->max_depth; i++) {
        wipe_strings(tok->stack[i].current);
        wipe_strings(tok->stack[i].obj);
    }
    if (tok->pb && tok->pb->buf)
        secure_wipe(tok->pb->buf, (size_t)tok->pb->size);
    json_tokener_free(tok);
}

static int run_json_c(const char *text, size_t len, json_object **ret, char *err, size_t err_len)
{
    struct json_tokener *tok = json_tokener_new_ex(JSON_TEXT_MAX_DEPTH);
    if (!tok)
        return M2MVPN_E_NOMEM;
    if (!presize_token_buffer(tok, len)) {
        free_tokener(tok);
        return M2MVPN_E_NOMEM;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *root = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    free_tokener(tok);

    if (!root) {
        if (jerr == json_tokener_continue || jerr == json_tokener_success)
            return fail_at(text, len, len, "unexpected end of input", err, err_len);
        return fail_at(text, len, end, json_tokener_error_desc(jerr), err, err_len);
    }
    if (!only_space_from(text, len, end)) {
        json_text_free(root);
        return fail_at(text, len, end, "unexpected text after the end", err, err_len);
    }
    *ret = root;
    return 0;
}

int json_text_parse(const char *text, size_t len, json_object **ret, char *err, size_t err_len)
{
    if (!text || !ret) {
        if (err && err_len)
            snprintf(err, err_len, "invalid argument");
        return M2MVPN_E_INVAL;
    }
    if (len > JSON_TEXT_MAX_BYTES) {
        if (err && err_len)
            snprintf(err, err_len, "larger than 1 MiB");
        return M2MVPN_E_JSON;
    }
    scan_state st = { .len = len, .tracking = true };
    st.text = malloc(len + 1);
    st.frames = malloc(JSON_TEXT_MAX_DEPTH * sizeof(*st.frames));
    if (!st.text || !st.frames) {
        free(st.text);
        free(st.frames);
        return M2MVPN_E_NOMEM;
    }
    memcpy(st.text, text, len);
    st.text[len] = '\0';
    /* Editors on some systems start UTF-8 files with a byte order mark. */
    if (len >= 3 && memcmp(st.text, "\xef\xbb\xbf", 3) == 0)
        memset(st.text, ' ', 3);

    json_object *root = NULL;
    int r = scan_text(&st, err, err_len);
    if (r == 0)
        r = run_json_c(st.text, len, &root, err, err_len);
    if (r == 0 && st.late_fault) {
        r = fail_at(st.text, len, st.late_off, st.late_fault, err, err_len);
        json_text_free(root);
        root = NULL;
    }
    secure_free(st.text, len + 1);
    free(st.frames);
    if (r == 0)
        *ret = root;
    return r;
}

static void wipe_strings(json_object *o)
{
    switch (json_object_get_type(o)) {
    case json_type_string: {
        /* json-c owns this buffer; the tree is about to be freed. */
        char *s = (char *)json_object_get_string(o);
        secure_wipe(s, (size_t)json_object_get_string_len(o));
        break;
    }
    case json_type_object: {
        json_object_object_foreach(o, key, val) {
            (void)key;
            wipe_strings(val);
        }
        break;
    }
    case json_type_array: {
        size_t n = json_object_array_length(o);
        for (size_t i = 0; i < n; i++)
            wipe_strings(json_object_array_get_idx(o, i));
        break;
    }
    default:
        break;
    }
}

void json_text_free(json_object *root)
{
    if (!root)
        return;
    wipe_strings(root);
    json_object_put(root);
}
