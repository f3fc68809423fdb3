/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A program with memory errors on purpose, built with ASan+UBSan like our
 * test binaries: test_sanitizer_check.py runs it through the interop
 * harness to show that a sanitizer report fails the run.
 *
 *   sanitizer_canary clean | leak | overflow | ubsan
 *   sanitizer_canary run ... --control PATH ...
 *
 * clean: exits 0. leak: loses 64 bytes, exits 0 (LeakSanitizer reports them
 * at exit). overflow: writes past a heap block (ASan). ubsan: a signed
 * integer overflow (UBSan).
 * run: stands in for `m2mvpn run`: creates PATH (the "control socket" the
 * harness waits for), waits for SIGTERM, then does what $M2MVPN_CANARY_ON_TERM
 * says (one of the actions above).
 */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink; /* volatile: the allocation cannot be optimised away */

static int act(const char *what)
{
    if (!strcmp(what, "clean"))
        return 0;
    if (!strcmp(what, "leak")) {
        sink = malloc(64);
        sink = NULL;
        return 0;
    }
    if (!strcmp(what, "overflow")) {
        volatile size_t n = 9;
        char *p = malloc(8);
        sink = p;
        memset(p, 0, n);
        free(sink);
        return 0;
    }
    if (!strcmp(what, "ubsan")) {
        volatile int big = INT_MAX;
        return big + 1 == 0;
    }
    fprintf(stderr, "sanitizer_canary: unknown action '%s'\n", what);
    return 2;
}

static int run(int argc, char **argv)
{
    const char *control = NULL;
    for (int i = 2; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--control"))
            control = argv[i + 1];
    const char *on_term = getenv("M2MVPN_CANARY_ON_TERM");
    if (!control || !on_term) {
        fprintf(stderr, "sanitizer_canary run: needs --control PATH and M2MVPN_CANARY_ON_TERM\n");
        return 2;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    FILE *f = fopen(control, "w");
    if (!f) {
        perror(control);
        return 2;
    }
    fclose(f);
    int sig = 0;
    sigwait(&set, &sig);
    return act(on_term);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "run"))
        return run(argc, argv);
    if (argc != 2) {
        fprintf(stderr, "usage: sanitizer_canary clean|leak|overflow|ubsan | run ... --control PATH\n");
        return 2;
    }
    return act(argv[1]);
}
