/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "secret_input.h"

int secret_read(const char *what, char *buf, size_t cap, char *err, size_t err_len)
{
    bool tty = isatty(STDIN_FILENO);
    struct termios saved, quiet;
    if (tty) {
        if (tcgetattr(STDIN_FILENO, &saved) < 0) {
            snprintf(err, err_len, "cannot read the terminal settings: %s", strerror(errno));
            return -1;
        }
        quiet = saved;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) < 0) {
            snprintf(err, err_len, "cannot switch off the terminal echo: %s", strerror(errno));
            return -1;
        }
        fprintf(stderr, "%c%s: ", what[0] >= 'a' && what[0] <= 'z' ? what[0] - 'a' + 'A' : what[0], what + 1);
        fflush(stderr);
    }

    size_t len = 0;
    bool too_long = false, got_newline = false;
    int read_errno = 0;
    for (;;) {
        char c;
        ssize_t n = read(STDIN_FILENO, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            read_errno = errno;
            break;
        }
        if (n == 0)
            break;
        if (c == '\n') {
            got_newline = true;
            break;
        }
        if (len + 1 < cap)
            buf[len++] = c;
        else
            too_long = true; /* keep reading to the end of the line */
        c = 0;
    }
    if (tty)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    buf[len] = '\0';

    if (read_errno)
        snprintf(err, err_len, "cannot read the %s: %s", what, strerror(read_errno));
    else if (too_long)
        snprintf(err, err_len, "the %s is longer than %zu bytes", what, cap - 1);
    else if (len == 0)
        snprintf(err, err_len, "no %s given%s", what, got_newline || tty ? "" : " on standard input");
    else if (memchr(buf, '\0', len))
        snprintf(err, err_len, "the %s contains a NUL byte", what);
    else
        return (int)len;
    explicit_bzero(buf, cap);
    return -1;
}
