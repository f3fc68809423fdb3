/* SPDX-License-Identifier: Apache-2.0 */
/* lib/core: bounded buffers, event loop and timers, secure memory, log. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/secmem.h"

/* ------------------------------------------------------------- reader */

static const uint8_t sample[] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09 };

START_TEST(reader_integers_big_endian)
{
    buf_reader r = buf_reader_make(sample, sizeof(sample));
    uint8_t u8;
    uint16_t u16;
    uint32_t u24, u32;
    ck_assert(buf_get_u8(&r, &u8));
    ck_assert_uint_eq(u8, 0x01);
    ck_assert(buf_get_u16(&r, &u16));
    ck_assert_uint_eq(u16, 0x0203);
    ck_assert(buf_get_u24(&r, &u24));
    ck_assert_uint_eq(u24, 0x040506);
    ck_assert(buf_get_u24(&r, &u32));
    ck_assert_uint_eq(u32, 0x070809);
    ck_assert_uint_eq(buf_remaining(&r), 0);
    r = buf_reader_make(sample, sizeof(sample));
    uint64_t u64;
    ck_assert(buf_get_u64(&r, &u64));
    ck_assert_uint_eq(u64, 0x0102030405060708ull);
    ck_assert(buf_get_u8(&r, &u8));
    ck_assert_uint_eq(u8, 0x09);
    r = buf_reader_make(sample, 4);
    ck_assert(buf_get_u32(&r, &u32));
    ck_assert_uint_eq(u32, 0x01020304);
}
END_TEST

/* Every getter fails on one byte too few and leaves the reader unchanged. */
START_TEST(reader_short_input_fails_without_advancing)
{
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    uint8_t out[8];
    buf_reader sub;
    struct { size_t need; int kind; } cases[] = {
        { 1, 0 }, { 2, 1 }, { 3, 2 }, { 4, 3 }, { 8, 4 }, { 5, 5 }, { 5, 6 }, { 5, 7 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        buf_reader r = buf_reader_make(sample, cases[i].need - 1);
        buf_reader before = r;
        bool ok = true;
        switch (cases[i].kind) {
        case 0: ok = buf_get_u8(&r, &u8); break;
        case 1: ok = buf_get_u16(&r, &u16); break;
        case 2: ok = buf_get_u24(&r, &u32); break;
        case 3: ok = buf_get_u32(&r, &u32); break;
        case 4: ok = buf_get_u64(&r, &u64); break;
        case 5: ok = buf_get_view(&r, 5, &sub); break;
        case 6: ok = buf_get_bytes(&r, out, 5); break;
        case 7: ok = buf_skip(&r, 5); break;
        }
        ck_assert_msg(!ok, "case %zu succeeded on short input", i);
        ck_assert_ptr_eq(r.p, before.p);
        ck_assert_uint_eq(r.len, before.len);
    }
    buf_reader empty = buf_reader_make(NULL, 0);
    ck_assert(!buf_peek_u8(&empty, &u8));
    ck_assert(!buf_peek_u16(&empty, &u16));
}
END_TEST

START_TEST(reader_peek_does_not_advance)
{
    buf_reader r = buf_reader_make(sample, sizeof(sample));
    uint8_t u8;
    uint16_t u16;
    ck_assert(buf_peek_u8(&r, &u8));
    ck_assert(buf_peek_u16(&r, &u16));
    ck_assert_uint_eq(u8, 1);
    ck_assert_uint_eq(u16, 0x0102);
    ck_assert_uint_eq(buf_remaining(&r), sizeof(sample));
}
END_TEST

START_TEST(reader_views_are_bounded)
{
    buf_reader r = buf_reader_make(sample, sizeof(sample));
    buf_reader sub;
    ck_assert(buf_get_view(&r, 3, &sub));
    ck_assert_uint_eq(buf_remaining(&sub), 3);
    ck_assert_uint_eq(buf_remaining(&r), 6);
    uint32_t u32;
    ck_assert(!buf_get_u32(&sub, &u32)); /* cannot read past the view */
    uint8_t out[3];
    ck_assert(buf_get_bytes(&sub, out, 3));
    ck_assert_mem_eq(out, sample, 3);
    ck_assert(buf_get_view(&r, 0, &sub));
    ck_assert_uint_eq(buf_remaining(&sub), 0);
}
END_TEST

START_TEST(reader_length_prefixed)
{
    const uint8_t ok8[] = { 2, 0xaa, 0xbb, 0xcc };
    const uint8_t ok16[] = { 0, 3, 1, 2, 3 };
    const uint8_t bad8[] = { 4, 0xaa, 0xbb };
    const uint8_t bad16[] = { 0, 9, 1, 2 };
    const uint8_t bad16_short[] = { 0 };
    buf_reader r = buf_reader_make(ok8, sizeof(ok8)), sub;
    ck_assert(buf_get_u8_length_prefixed(&r, &sub));
    ck_assert_uint_eq(sub.len, 2);
    ck_assert_uint_eq(sub.p[1], 0xbb);
    ck_assert_uint_eq(buf_remaining(&r), 1);
    r = buf_reader_make(ok16, sizeof(ok16));
    ck_assert(buf_get_u16_length_prefixed(&r, &sub));
    ck_assert_uint_eq(sub.len, 3);
    ck_assert_uint_eq(buf_remaining(&r), 0);
    /* Declared length beyond the data: fails and the length byte is not consumed. */
    r = buf_reader_make(bad8, sizeof(bad8));
    ck_assert(!buf_get_u8_length_prefixed(&r, &sub));
    ck_assert_uint_eq(buf_remaining(&r), sizeof(bad8));
    r = buf_reader_make(bad16, sizeof(bad16));
    ck_assert(!buf_get_u16_length_prefixed(&r, &sub));
    ck_assert_uint_eq(buf_remaining(&r), sizeof(bad16));
    r = buf_reader_make(bad16_short, sizeof(bad16_short));
    ck_assert(!buf_get_u16_length_prefixed(&r, &sub));
    ck_assert_uint_eq(buf_remaining(&r), 1);
}
END_TEST

/* ------------------------------------------------------------- writer */

START_TEST(writer_writes_big_endian)
{
    uint8_t mem[32];
    buf_writer w;
    buf_writer_init(&w, mem, sizeof(mem));
    buf_put_u8(&w, 0x01);
    buf_put_u16(&w, 0x0203);
    buf_put_u24(&w, 0x040506);
    buf_put_u32(&w, 0x0708090a);
    buf_put_u64(&w, 0x0b0c0d0e0f101112ull);
    buf_put_bytes(&w, "\x13\x14", 2);
    buf_put_zeros(&w, 2);
    ck_assert(buf_writer_ok(&w));
    const uint8_t want[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                             17, 18, 0x13, 0x14, 0, 0 };
    ck_assert_uint_eq(buf_writer_len(&w), sizeof(want));
    ck_assert_mem_eq(mem, want, sizeof(want));
}
END_TEST

/* Any write past capacity sets a sticky error; nothing further is written. */
START_TEST(writer_overflow_is_sticky)
{
    for (int kind = 0; kind < 8; kind++) {
        uint8_t mem[4] = { 0xee, 0xee, 0xee, 0xee };
        buf_writer w;
        buf_writer_init(&w, mem, 3);
        buf_put_u8(&w, 0xaa);
        switch (kind) {
        case 0: buf_put_u24(&w, 1); break;
        case 1: buf_put_u32(&w, 1); break;
        case 2: buf_put_u64(&w, 1); break;
        case 3: buf_put_bytes(&w, "abc", 3); break;
        case 4: buf_put_zeros(&w, 3); break;
        case 5: ck_assert_ptr_null(buf_reserve(&w, 3)); break;
        case 6: buf_put_u16(&w, 1); buf_put_u8(&w, 1); buf_put_u8(&w, 2); break;
        case 7: buf_patch_u16(&w, 0, 0x1234); break; /* patch beyond what was written */
        }
        ck_assert_msg(!buf_writer_ok(&w), "kind %d did not fail", kind);
        size_t len = buf_writer_len(&w);
        buf_put_u8(&w, 0x55); /* sticky: ignored */
        ck_assert(!buf_writer_ok(&w));
        ck_assert_uint_eq(buf_writer_len(&w), len);
        ck_assert_uint_eq(mem[3], 0xee); /* never beyond capacity */
    }
    buf_writer w;
    buf_writer_init(&w, NULL, 100); /* no memory: every write fails */
    buf_put_u8(&w, 1);
    ck_assert(!buf_writer_ok(&w));
    uint8_t m[4];
    buf_writer_init(&w, m, sizeof(m));
    buf_put_u24(&w, 0x1000000); /* does not fit 24 bits */
    ck_assert(!buf_writer_ok(&w));
}
END_TEST

START_TEST(writer_reserve_then_patch)
{
    uint8_t mem[16];
    buf_writer w;
    buf_writer_init(&w, mem, sizeof(mem));
    size_t at = buf_writer_len(&w);
    buf_put_u16(&w, 0); /* length placeholder */
    buf_put_bytes(&w, "hello", 5);
    buf_patch_u16(&w, at, (uint16_t)(buf_writer_len(&w) - at));
    size_t at32 = buf_writer_len(&w);
    buf_put_u32(&w, 0);
    buf_patch_u32(&w, at32, 0xdeadbeef);
    uint8_t *res = buf_reserve(&w, 2);
    ck_assert_ptr_nonnull(res);
    res[0] = 'x';
    res[1] = 'y';
    ck_assert(buf_writer_ok(&w));
    const uint8_t want[] = { 0, 7, 'h', 'e', 'l', 'l', 'o', 0xde, 0xad, 0xbe, 0xef, 'x', 'y' };
    ck_assert_uint_eq(buf_writer_len(&w), sizeof(want));
    ck_assert_mem_eq(mem, want, sizeof(want));
    buf_patch_u32(&w, buf_writer_len(&w) - 2, 1); /* straddles the end */
    ck_assert(!buf_writer_ok(&w));
}
END_TEST

START_TEST(writer_reader_round_trip)
{
    uint8_t mem[64];
    buf_writer w;
    buf_writer_init(&w, mem, sizeof(mem));
    for (uint32_t i = 0; i < 10; i++)
        buf_put_u32(&w, i * 0x01010101u);
    ck_assert(buf_writer_ok(&w));
    buf_reader r = buf_reader_make(mem, buf_writer_len(&w));
    for (uint32_t i = 0; i < 10; i++) {
        uint32_t v;
        ck_assert(buf_get_u32(&r, &v));
        ck_assert_uint_eq(v, i * 0x01010101u);
    }
    ck_assert_uint_eq(buf_remaining(&r), 0);
}
END_TEST

/* -------------------------------------------------------------- loop */

typedef struct {
    core_loop *loop;
    int order[16];
    int n;
    core_timer *rearm; /* re-arm this one from the callback */
    int rearm_left;
} timer_log;

typedef struct {
    timer_log *log;
    int id;
    core_timer t;
} tagged_timer;

static void record_timer(void *arg)
{
    tagged_timer *tt = arg;
    tt->log->order[tt->log->n++] = tt->id;
    if (tt->log->rearm == &tt->t && tt->log->rearm_left-- > 0)
        core_timer_arm(tt->log->loop, &tt->t, 0);
}

static void run_until(core_loop *l, int *counter, int want)
{
    uint64_t start = core_monotonic_ms();
    while (*counter < want && core_monotonic_ms() - start < 5000)
        ck_assert_int_eq(core_loop_run_once(l, 100), 0);
}

START_TEST(timers_fire_in_deadline_order)
{
    core_loop l;
    ck_assert_int_eq(core_loop_init(&l, NULL, NULL), 0);
    timer_log log = { .loop = &l };
    tagged_timer t[5];
    const int delays[5] = { 40, 10, 30, 10, 20 };
    for (int i = 0; i < 5; i++) {
        t[i].log = &log;
        t[i].id = i;
        core_timer_init(&t[i].t, record_timer, &t[i]);
        core_timer_arm(&l, &t[i].t, delays[i]);
    }
    ck_assert_int_le(core_loop_timeout_ms(&l), 10);
    run_until(&l, &log.n, 5);
    /* Equal deadlines fire in the order they were armed (1 before 3). */
    const int want[5] = { 1, 3, 4, 2, 0 };
    ck_assert_int_eq(log.n, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(log.order[i], want[i]);
    ck_assert_int_eq(core_loop_timeout_ms(&l), -1);
    core_loop_destroy(&l);
}
END_TEST

START_TEST(timers_cancel_and_rearm)
{
    core_loop l;
    ck_assert_int_eq(core_loop_init(&l, NULL, NULL), 0);
    timer_log log = { .loop = &l };
    tagged_timer a = { .log = &log, .id = 1 }, b = { .log = &log, .id = 2 };
    core_timer_init(&a.t, record_timer, &a);
    core_timer_init(&b.t, record_timer, &b);
    core_timer_arm(&l, &a.t, 5);
    core_timer_arm(&l, &b.t, 10);
    core_timer_cancel(&l, &a.t);
    core_timer_cancel(&l, &a.t); /* twice is harmless */
    core_timer_arm(&l, &b.t, 1); /* re-arm moves it */
    log.rearm = &b.t;
    log.rearm_left = 2; /* zero-delay re-arm from its callback: fires on later rounds */
    run_until(&l, &log.n, 3);
    ck_assert_int_eq(log.n, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(log.order[i], 2);
    ck_assert(!a.t.armed);
    core_loop_destroy(&l);
}
END_TEST

static void count_wake(void *arg)
{
    (*(int *)arg)++;
}

static void read_pipe(void *arg, uint32_t ev)
{
    (void)ev;
    int *fds = arg;
    char c;
    ck_assert_int_eq(read(fds[0], &c, 1), 1);
    fds[2] = c;
}

START_TEST(loop_dispatches_io_and_wake)
{
    int woken = 0;
    core_loop l;
    ck_assert_int_eq(core_loop_init(&l, count_wake, &woken), 0);
    int fds[3] = { -1, -1, 0 };
    ck_assert_int_eq(pipe(fds), 0);
    core_io io;
    ck_assert_int_eq(core_io_add(&l, &io, fds[0], 0x001 /* EPOLLIN */, read_pipe, fds), 0);
    ck_assert_int_eq(write(fds[1], "z", 1), 1);
    core_loop_wake(&l);
    core_loop_wake(&l); /* coalesced */
    ck_assert_int_eq(core_loop_run_once(&l, 1000), 0);
    ck_assert_int_eq(fds[2], 'z');
    ck_assert_int_eq(woken, 1);
    core_io_remove(&l, &io);
    close(fds[0]);
    close(fds[1]);
    core_loop_destroy(&l);
}
END_TEST

/* A callback may remove (and free) another source that is ready in the same
 * batch: that one must not be dispatched any more (no use after free). */
typedef struct pair_io {
    core_loop *loop;
    core_io *io[2];
    int fds[2][2];
    int calls;
} pair_io;

static void remove_the_other(pair_io *p, int me)
{
    p->calls++;
    char c;
    ck_assert_int_eq(read(p->fds[me][0], &c, 1), 1);
    core_io *other = p->io[1 - me];
    if (other) {
        core_io_remove(p->loop, other);
        free(other);
        p->io[1 - me] = NULL;
    }
}

static void first_cb(void *arg, uint32_t ev)
{
    (void)ev;
    remove_the_other(arg, 0);
}

static void second_cb(void *arg, uint32_t ev)
{
    (void)ev;
    remove_the_other(arg, 1);
}

START_TEST(loop_source_removed_by_earlier_callback_is_skipped)
{
    core_loop l;
    ck_assert_int_eq(core_loop_init(&l, NULL, NULL), 0);
    pair_io p = { .loop = &l };
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(pipe(p.fds[i]), 0);
        p.io[i] = calloc(1, sizeof(core_io));
        ck_assert_int_eq(core_io_add(&l, p.io[i], p.fds[i][0], 0x001, i ? second_cb : first_cb, &p), 0);
        ck_assert_int_eq(write(p.fds[i][1], "x", 1), 1);
    }
    ck_assert_int_eq(core_loop_run_once(&l, 1000), 0); /* both ready in one batch */
    ck_assert_int_eq(p.calls, 1);
    for (int i = 0; i < 2; i++) {
        if (p.io[i]) {
            core_io_remove(&l, p.io[i]);
            free(p.io[i]);
        }
        close(p.fds[i][0]);
        close(p.fds[i][1]);
    }
    core_loop_destroy(&l);
}
END_TEST

/* ------------------------------------------------------------ secmem, log */

START_TEST(secure_wipe_zeroes)
{
    char *s = secure_memdup("hunter2", 7);
    ck_assert_str_eq(s, "hunter2");
    secure_wipe(s, 7);
    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(s[i], 0);
    free(s);
    secure_wipe(NULL, 5); /* harmless */
    secure_free_str(NULL);
    secure_free(NULL, 3);
}
END_TEST

static char last_line[256];
static int last_level = -1;

static void capture_log(m2mvpn *h, int level, const char *sub, const char *msg, void *ud)
{
    (void)h;
    (void)ud;
    last_level = level;
    snprintf(last_line, sizeof(last_line), "%s|%s", sub, msg);
}

START_TEST(log_filters_by_level)
{
    core_log lg;
    core_log_init(&lg, NULL);
    LOG_ERR(&lg, "core", "no hook yet %d", 1); /* dropped: no callback */
    ck_assert_int_eq(last_level, -1);
    core_log_set(&lg, capture_log, M2MVPN_LOG_INFO, NULL);
    LOG_DBG(&lg, "core", "too verbose");
    ck_assert_int_eq(last_level, -1);
    ck_assert(!core_log_enabled(&lg, M2MVPN_LOG_DEBUG));
    LOG_INFO(&lg, "ike", "state %s -> %s", "a", "b");
    ck_assert_int_eq(last_level, M2MVPN_LOG_INFO);
    ck_assert_str_eq(last_line, "ike|state a -> b");
    core_log_destroy(&lg);
}
END_TEST

static Suite *core_suite(void)
{
    Suite *s = suite_create("core");
    TCase *b = tcase_create("buffers");
    tcase_add_test(b, reader_integers_big_endian);
    tcase_add_test(b, reader_short_input_fails_without_advancing);
    tcase_add_test(b, reader_peek_does_not_advance);
    tcase_add_test(b, reader_views_are_bounded);
    tcase_add_test(b, reader_length_prefixed);
    tcase_add_test(b, writer_writes_big_endian);
    tcase_add_test(b, writer_overflow_is_sticky);
    tcase_add_test(b, writer_reserve_then_patch);
    tcase_add_test(b, writer_reader_round_trip);
    suite_add_tcase(s, b);
    TCase *l = tcase_create("loop");
    tcase_add_test(l, timers_fire_in_deadline_order);
    tcase_add_test(l, timers_cancel_and_rearm);
    tcase_add_test(l, loop_dispatches_io_and_wake);
    tcase_add_test(l, loop_source_removed_by_earlier_callback_is_skipped);
    suite_add_tcase(s, l);
    TCase *m = tcase_create("misc");
    tcase_add_test(m, secure_wipe_zeroes);
    tcase_add_test(m, log_filters_by_level);
    suite_add_tcase(s, m);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(core_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
