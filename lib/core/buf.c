/* SPDX-License-Identifier: Apache-2.0 */
#include "buf.h"

#include <string.h>

static bool get_be(buf_reader *r, size_t n, uint64_t *out)
{
    if (r->len < n)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | r->p[i];
    r->p += n;
    r->len -= n;
    *out = v;
    return true;
}

bool buf_get_u8(buf_reader *r, uint8_t *out)
{
    uint64_t v;
    if (!get_be(r, 1, &v))
        return false;
    *out = (uint8_t)v;
    return true;
}

bool buf_get_u16(buf_reader *r, uint16_t *out)
{
    uint64_t v;
    if (!get_be(r, 2, &v))
        return false;
    *out = (uint16_t)v;
    return true;
}

bool buf_get_u24(buf_reader *r, uint32_t *out)
{
    uint64_t v;
    if (!get_be(r, 3, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

bool buf_get_u32(buf_reader *r, uint32_t *out)
{
    uint64_t v;
    if (!get_be(r, 4, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

bool buf_get_u64(buf_reader *r, uint64_t *out)
{
    return get_be(r, 8, out);
}

bool buf_peek_u8(const buf_reader *r, uint8_t *out)
{
    buf_reader c = *r;
    return buf_get_u8(&c, out);
}

bool buf_peek_u16(const buf_reader *r, uint16_t *out)
{
    buf_reader c = *r;
    return buf_get_u16(&c, out);
}

bool buf_get_view(buf_reader *r, size_t n, buf_reader *out)
{
    if (r->len < n)
        return false;
    out->p = r->p;
    out->len = n;
    r->p += n;
    r->len -= n;
    return true;
}

bool buf_get_bytes(buf_reader *r, void *out, size_t n)
{
    if (r->len < n)
        return false;
    if (n)
        memcpy(out, r->p, n);
    r->p += n;
    r->len -= n;
    return true;
}

bool buf_skip(buf_reader *r, size_t n)
{
    buf_reader ignored;
    return buf_get_view(r, n, &ignored);
}

bool buf_get_u8_length_prefixed(buf_reader *r, buf_reader *out)
{
    buf_reader c = *r;
    uint8_t n;
    if (!buf_get_u8(&c, &n) || !buf_get_view(&c, n, out))
        return false;
    *r = c;
    return true;
}

bool buf_get_u16_length_prefixed(buf_reader *r, buf_reader *out)
{
    buf_reader c = *r;
    uint16_t n;
    if (!buf_get_u16(&c, &n) || !buf_get_view(&c, n, out))
        return false;
    *r = c;
    return true;
}

void buf_writer_init(buf_writer *w, void *mem, size_t cap)
{
    w->p = mem;
    w->cap = mem ? cap : 0;
    w->len = 0;
    w->err = false;
}

uint8_t *buf_reserve(buf_writer *w, size_t n)
{
    if (w->err || w->cap - w->len < n) {
        w->err = true;
        return NULL;
    }
    uint8_t *at = w->p + w->len;
    w->len += n;
    return at;
}

static void put_be(buf_writer *w, uint64_t v, size_t n)
{
    uint8_t *at = buf_reserve(w, n);
    if (!at)
        return;
    for (size_t i = 0; i < n; i++)
        at[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

void buf_put_u8(buf_writer *w, uint8_t v) { put_be(w, v, 1); }
void buf_put_u16(buf_writer *w, uint16_t v) { put_be(w, v, 2); }
void buf_put_u24(buf_writer *w, uint32_t v)
{
    if (v > 0xffffff) {
        w->err = true;
        return;
    }
    put_be(w, v, 3);
}
void buf_put_u32(buf_writer *w, uint32_t v) { put_be(w, v, 4); }
void buf_put_u64(buf_writer *w, uint64_t v) { put_be(w, v, 8); }

void buf_put_bytes(buf_writer *w, const void *p, size_t n)
{
    uint8_t *at = buf_reserve(w, n);
    if (at && n)
        memcpy(at, p, n);
}

void buf_put_zeros(buf_writer *w, size_t n)
{
    uint8_t *at = buf_reserve(w, n);
    if (at && n)
        memset(at, 0, n);
}

static void patch_be(buf_writer *w, size_t at, uint32_t v, size_t n)
{
    if (w->err || at > w->len || w->len - at < n) {
        w->err = true;
        return;
    }
    for (size_t i = 0; i < n; i++)
        w->p[at + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

void buf_patch_u16(buf_writer *w, size_t at, uint16_t v) { patch_be(w, at, v, 2); }
void buf_patch_u32(buf_writer *w, size_t at, uint32_t v) { patch_be(w, at, v, 4); }
