/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The library, the tools and the tests are built with 64-bit time_t and off_t,
 * also on 32-bit targets (meson.build adds _TIME_BITS=64 there): times after
 * January 2038 and offsets past 2 GiB. Built with the project's arguments,
 * like the library's sources.
 */
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

int main(void)
{
    printf("time_t %zu bytes, off_t %zu bytes, pointers %zu bytes\n",
           sizeof(time_t), sizeof(off_t), sizeof(void *));
    time_t after_2038 = (time_t)0x80000000LL; /* 2038-01-19T03:14:08Z */
    struct tm tm;
    if (sizeof(time_t) < 8 || sizeof(off_t) < 8 || !gmtime_r(&after_2038, &tm) || tm.tm_year != 138) {
        printf("not year-2038 safe: time_t or off_t has 32 bits\n");
        return 1;
    }
    return 0;
}
