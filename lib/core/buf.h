/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Bounded byte buffers: every wire codec (IKE, ESP) is built on these.
 *
 * buf_reader is a (pointer, length) view passed by value or pointer. Each get
 * either succeeds and advances, or fails (returns false) and leaves the reader
 * exactly as it was. Multi-byte integers are big-endian (network order).
 *
 * buf_writer writes into caller-provided memory of fixed capacity. Any write
 * that does not fit sets a sticky error and writes nothing more, so a run of
 * writes is checked once with buf_writer_ok(). Length fields are written as
 * placeholders and patched once the length is known (buf_patch_u16/u32).
 */
#ifndef M2MVPN_CORE_BUF_H
#define M2MVPN_CORE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct buf_reader {
    const uint8_t *p;
    size_t len;
} buf_reader;

static inline buf_reader buf_reader_make(const void *p, size_t len)
{
    buf_reader r = { (const uint8_t *)p, len };
    return r;
}

static inline size_t buf_remaining(const buf_reader *r) { return r->len; }

bool buf_get_u8(buf_reader *r, uint8_t *out);
bool buf_get_u16(buf_reader *r, uint16_t *out);
bool buf_get_u24(buf_reader *r, uint32_t *out);
bool buf_get_u32(buf_reader *r, uint32_t *out);
bool buf_get_u64(buf_reader *r, uint64_t *out);
/* Peek without advancing. */
bool buf_peek_u8(const buf_reader *r, uint8_t *out);
bool buf_peek_u16(const buf_reader *r, uint16_t *out);
/* Next n bytes as a bounded sub-view. */
bool buf_get_view(buf_reader *r, size_t n, buf_reader *out);
/* Copy the next n bytes out. */
bool buf_get_bytes(buf_reader *r, void *out, size_t n);
bool buf_skip(buf_reader *r, size_t n);
/* A length byte/u16 followed by that many bytes, as a sub-view. */
bool buf_get_u8_length_prefixed(buf_reader *r, buf_reader *out);
bool buf_get_u16_length_prefixed(buf_reader *r, buf_reader *out);

typedef struct buf_writer {
    uint8_t *p;
    size_t cap;
    size_t len;
    bool err;
} buf_writer;

void buf_writer_init(buf_writer *w, void *mem, size_t cap);
static inline bool buf_writer_ok(const buf_writer *w) { return !w->err; }
static inline size_t buf_writer_len(const buf_writer *w) { return w->len; }

void buf_put_u8(buf_writer *w, uint8_t v);
void buf_put_u16(buf_writer *w, uint16_t v);
void buf_put_u24(buf_writer *w, uint32_t v);
void buf_put_u32(buf_writer *w, uint32_t v);
void buf_put_u64(buf_writer *w, uint64_t v);
void buf_put_bytes(buf_writer *w, const void *p, size_t n);
void buf_put_zeros(buf_writer *w, size_t n);
/* Reserve n bytes to fill in place; NULL (and sticky error) if they do not fit. */
uint8_t *buf_reserve(buf_writer *w, size_t n);
/* Overwrite an already written field at offset `at`; sets the error if the
 * field lies beyond what was written. */
void buf_patch_u16(buf_writer *w, size_t at, uint16_t v);
void buf_patch_u32(buf_writer *w, size_t at, uint32_t v);

/* Plain big-endian helpers for code that already checked its bounds. */
static inline uint16_t buf_load_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t buf_load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void buf_store_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void buf_store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

#endif
