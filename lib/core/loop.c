/* SPDX-License-Identifier: Apache-2.0 */
#include "loop.h"

#include <errno.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* Tags for the loop's own fds in epoll data; I/O sources carry their core_io *. */
static char tag_timer, tag_wake;

uint64_t core_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int core_loop_init(core_loop *l, void (*on_wake)(void *), void *wake_arg)
{
    l->timers = NULL;
    l->arm_seq = 0;
    l->batch = NULL;
    l->batch_n = 0;
    l->on_wake = on_wake;
    l->wake_arg = wake_arg;
    l->clock_ms = core_monotonic_ms;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int err = 0;
    if (l->epfd < 0 || l->timerfd < 0 || l->wakefd < 0)
        err = -errno;
    struct epoll_event ev = { .events = EPOLLIN };
    if (!err) {
        ev.data.ptr = &tag_timer;
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->timerfd, &ev) < 0)
            err = -errno;
    }
    if (!err) {
        ev.data.ptr = &tag_wake;
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) < 0)
            err = -errno;
    }
    if (err)
        core_loop_destroy(l);
    return err;
}

void core_loop_destroy(core_loop *l)
{
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->timerfd >= 0)
        close(l->timerfd);
    if (l->wakefd >= 0)
        close(l->wakefd);
    l->epfd = l->timerfd = l->wakefd = -1;
    l->timers = NULL;
}

int core_io_add(core_loop *l, core_io *io, int fd, uint32_t events, core_io_cb cb, void *arg)
{
    io->fd = fd;
    io->cb = cb;
    io->arg = arg;
    struct epoll_event ev = { .events = events, .data.ptr = io };
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int core_io_modify(core_loop *l, core_io *io, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = io };
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0 ? -errno : 0;
}

void core_io_remove(core_loop *l, core_io *io)
{
    if (io->fd >= 0)
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    io->fd = -1;
    for (int i = 0; i < l->batch_n; i++) /* not to be dispatched any more */
        if (l->batch[i].data.ptr == io)
            l->batch[i].data.ptr = NULL;
}

/* Point the timerfd at the earliest deadline so a poll on epfd alone sees it. */
static void program_timerfd(core_loop *l)
{
    struct itimerspec its = { 0 };
    if (l->timers) {
        uint64_t now = l->clock_ms();
        uint64_t d = l->timers->deadline_ms > now ? l->timers->deadline_ms - now : 0;
        if (d == 0)
            its.it_value.tv_nsec = 1; /* due now: fire at once */
        else {
            its.it_value.tv_sec = (time_t)(d / 1000);
            its.it_value.tv_nsec = (long)(d % 1000) * 1000000L;
        }
    }
    timerfd_settime(l->timerfd, 0, &its, NULL);
}

void core_timer_init(core_timer *t, core_timer_cb cb, void *arg)
{
    t->deadline_ms = 0;
    t->cb = cb;
    t->arg = arg;
    t->next = NULL;
    t->armed = false;
}

static void unlink_timer(core_loop *l, core_timer *t)
{
    for (core_timer **pp = &l->timers; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    t->next = NULL;
    t->armed = false;
}

void core_timer_arm(core_loop *l, core_timer *t, uint64_t delay_ms)
{
    if (t->armed)
        unlink_timer(l, t);
    t->deadline_ms = l->clock_ms() + delay_ms;
    t->seq = l->arm_seq++;
    core_timer **pp = &l->timers;
    while (*pp && (*pp)->deadline_ms <= t->deadline_ms)
        pp = &(*pp)->next;
    t->next = *pp;
    *pp = t;
    t->armed = true;
    program_timerfd(l);
}

void core_timer_cancel(core_loop *l, core_timer *t)
{
    if (!t->armed)
        return;
    unlink_timer(l, t);
    program_timerfd(l);
}

void core_loop_wake(core_loop *l)
{
    uint64_t one = 1;
    ssize_t n = write(l->wakefd, &one, sizeof(one));
    (void)n; /* EAGAIN means the counter is already non-zero: woken anyway */
}

int core_loop_timeout_ms(core_loop *l)
{
    if (!l->timers)
        return -1;
    uint64_t now = l->clock_ms();
    if (l->timers->deadline_ms <= now)
        return 0;
    uint64_t d = l->timers->deadline_ms - now;
    return d > INT32_MAX ? INT32_MAX : (int)d;
}

static void run_due_timers(core_loop *l)
{
    uint64_t now = l->clock_ms();
    /* Fire one due timer at a time from the head, so callbacks may arm or
     * cancel any timer. Timers armed during this round wait for the next one
     * (their seq is newer), so a zero-delay re-arm cannot spin here. */
    uint64_t limit = l->arm_seq;
    while (l->timers && l->timers->deadline_ms <= now && l->timers->seq < limit) {
        core_timer *t = l->timers;
        unlink_timer(l, t);
        t->cb(t->arg);
    }
    program_timerfd(l);
}

int core_loop_run_once(core_loop *l, int timeout_ms)
{
    int tmo = core_loop_timeout_ms(l);
    if (timeout_ms >= 0 && (tmo < 0 || timeout_ms < tmo))
        tmo = timeout_ms;
    struct epoll_event evs[32];
    int n = epoll_wait(l->epfd, evs, 32, tmo);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    l->batch = evs;
    l->batch_n = n;
    for (int i = 0; i < n; i++) {
        void *tag = evs[i].data.ptr;
        uint64_t v;
        if (!tag) {
            continue; /* its source was removed by an earlier callback */
        } else if (tag == &tag_timer) {
            ssize_t r = read(l->timerfd, &v, sizeof(v));
            (void)r;
        } else if (tag == &tag_wake) {
            ssize_t r = read(l->wakefd, &v, sizeof(v));
            (void)r;
            if (l->on_wake)
                l->on_wake(l->wake_arg);
        } else {
            core_io *io = tag;
            io->cb(io->arg, evs[i].events);
        }
    }
    l->batch = NULL;
    l->batch_n = 0;
    run_due_timers(l);
    return 0;
}
