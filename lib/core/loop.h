/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The engine's event loop: epoll for file descriptors, one timerfd for the
 * earliest timer, one eventfd to wake the loop from other threads.
 *
 * The epoll fd is what m2mvpn_get_fd() hands to applications with their own
 * poll loop: it turns readable whenever an I/O source, the timerfd or the wake
 * eventfd is ready. Everything except core_loop_wake() runs on the engine thread.
 */
#ifndef M2MVPN_CORE_LOOP_H
#define M2MVPN_CORE_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

typedef void (*core_io_cb)(void *arg, uint32_t epoll_events);
typedef void (*core_timer_cb)(void *arg);

typedef struct core_io {
    int fd;
    core_io_cb cb;
    void *arg;
} core_io;

/* A timer lives inside its owner; the loop keeps armed timers in a list
 * sorted by deadline (few timers exist: retransmit, DPD, rekey, keepalive). */
typedef struct core_timer {
    uint64_t deadline_ms;
    uint64_t seq;              /* arm order, for FIFO and one round per arm */
    core_timer_cb cb;
    void *arg;
    struct core_timer *next;
    bool armed;
} core_timer;

typedef struct core_loop {
    int epfd;
    int timerfd;
    int wakefd;
    core_timer *timers;        /* sorted by deadline, FIFO among equals */
    uint64_t arm_seq;
    void (*on_wake)(void *arg);
    void *wake_arg;
    uint64_t (*clock_ms)(void); /* monotonic ms; replaceable in tests */
    /* The batch being dispatched: core_io_remove() clears later entries for
     * the removed source, so a callback may remove (and free) any source. */
    struct epoll_event *batch;
    int batch_n;
} core_loop;

uint64_t core_monotonic_ms(void);

/* Returns 0 or -errno. */
int core_loop_init(core_loop *l, void (*on_wake)(void *), void *wake_arg);
void core_loop_destroy(core_loop *l);

int core_io_add(core_loop *l, core_io *io, int fd, uint32_t events, core_io_cb cb, void *arg);
int core_io_modify(core_loop *l, core_io *io, uint32_t events);
void core_io_remove(core_loop *l, core_io *io);

void core_timer_init(core_timer *t, core_timer_cb cb, void *arg);
/* (Re)arm to fire once after delay_ms. */
void core_timer_arm(core_loop *l, core_timer *t, uint64_t delay_ms);
void core_timer_cancel(core_loop *l, core_timer *t);

/* Thread-safe, async-signal-safe: make the loop call on_wake soon. */
void core_loop_wake(core_loop *l);

/* ms until the earliest timer (0 if due), -1 if none. */
int core_loop_timeout_ms(core_loop *l);
/* Wait up to timeout_ms (-1 forever, 0 poll), then dispatch ready I/O, the wake
 * handler and due timers. Returns 0 or -errno. */
int core_loop_run_once(core_loop *l, int timeout_ms);

#endif
