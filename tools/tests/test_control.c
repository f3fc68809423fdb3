/* SPDX-License-Identifier: Apache-2.0 */
/* The control protocol codec (tools/control.h): round trips and refusals. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../control.h"

static ctl_request req;
static char err[256];

static int parse(const char *line)
{
    memset(&req, 0xa5, sizeof(req));
    return ctl_request_parse(line, strlen(line), &req, err, sizeof(err));
}

START_TEST(plain_commands)
{
    ck_assert_int_eq(parse("status"), 0);
    ck_assert_int_eq(req.cmd, CTL_CMD_STATUS);
    ck_assert_uint_eq(req.argc, 0);
    ck_assert_int_eq(parse("connect"), 0);
    ck_assert_int_eq(req.cmd, CTL_CMD_CONNECT);
    ck_assert_uint_eq(req.argc, 0);
    ck_assert_int_eq(parse("connect atm-eu"), 0);
    ck_assert_uint_eq(req.argc, 1);
    ck_assert_str_eq(req.args[0], "atm-eu");
    ck_assert_int_eq(parse("stop"), 0);
    ck_assert_int_eq(req.cmd, CTL_CMD_STOP);
}
END_TEST

START_TEST(percent_decoding)
{
    ck_assert_int_eq(parse("login dev%201 p%25ss%0Aword"), 0);
    ck_assert_int_eq(req.cmd, CTL_CMD_LOGIN);
    ck_assert_str_eq(req.args[0], "dev 1");
    ck_assert_str_eq(req.args[1], "p%ss\nword");
    ck_assert_uint_eq(req.arg_len[1], 9);
    ck_assert_int_eq(parse("pin %ff%FF"), 0);
    ck_assert_uint_eq(req.arg_len[0], 2);
    ck_assert_int_eq((unsigned char)req.args[0][0], 0xff);
}
END_TEST

START_TEST(refusals)
{
    const char *bad[] = {
        "", "bogus", "status extra", "switch", "login onlyuser", "pin a b",
        " status", "status ", "connect  x", "pin %", "pin %4", "pin %zz", "pin %00",
        "pin a\tb", "STATUS", "unload",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(parse(bad[i]) == -1, "accepted '%s'", bad[i]);
        ck_assert_msg(err[0] != '\0', "no reason for '%s'", bad[i]);
    }
}
END_TEST

START_TEST(error_text_never_quotes_a_secret)
{
    ck_assert_int_eq(parse("pin sec%zzret"), -1);
    ck_assert_ptr_null(strstr(err, "sec"));
    ck_assert_int_eq(parse("login u s3cr3t\x01"), -1);
    ck_assert_ptr_null(strstr(err, "s3cr3t"));
}
END_TEST

START_TEST(length_bounds)
{
    /* An argument of exactly CTL_MAX_ARG bytes passes; one more is refused. */
    char *line = malloc(CTL_MAX_LINE + 16);
    strcpy(line, "pin ");
    memset(line + 4, 'x', CTL_MAX_ARG);
    line[4 + CTL_MAX_ARG] = '\0';
    ck_assert_int_eq(parse(line), 0);
    ck_assert_uint_eq(req.arg_len[0], CTL_MAX_ARG);
    line[4 + CTL_MAX_ARG] = 'x';
    line[5 + CTL_MAX_ARG] = '\0';
    ck_assert_int_eq(parse(line), -1);
    /* A line over CTL_MAX_LINE is refused before anything else. */
    memset(line, 'a', CTL_MAX_LINE + 1);
    ck_assert_int_eq(ctl_request_parse(line, CTL_MAX_LINE + 1, &req, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "longer"));
    free(line);
}
END_TEST

START_TEST(format_round_trip)
{
    char out[CTL_MAX_LINE + 2];
    const char *args[2] = { "user name", "pa ss%\n\x7f\xc3\xa9" };
    int n = ctl_request_format(CTL_CMD_LOGIN, args, 2, out, sizeof(out));
    ck_assert_int_gt(n, 0);
    ck_assert_uint_eq((size_t)n, strlen(out));
    ck_assert_int_eq(out[n - 1], '\n');
    size_t spaces = 0; /* only the two separators stay raw spaces */
    for (int i = 0; i < n; i++)
        spaces += out[i] == ' ';
    ck_assert_uint_eq(spaces, 2);
    ck_assert_int_eq(ctl_request_parse(out, (size_t)n - 1, &req, err, sizeof(err)), 0);
    ck_assert_int_eq(req.cmd, CTL_CMD_LOGIN);
    ck_assert_str_eq(req.args[0], args[0]);
    ck_assert_str_eq(req.args[1], args[1]);
    ctl_request_wipe(&req);
    ck_assert_uint_eq(req.argc, 0);
    ck_assert_int_eq(req.args[1][0], 0);
}
END_TEST

START_TEST(format_refusals)
{
    char out[64];
    const char *one[1] = { "x" };
    const char *empty[1] = { "" };
    ck_assert_int_eq(ctl_request_format(CTL_CMD_STATUS, one, 1, out, sizeof(out)), -1);
    ck_assert_int_eq(ctl_request_format(CTL_CMD_SWITCH, NULL, 0, out, sizeof(out)), -1);
    ck_assert_int_eq(ctl_request_format(CTL_CMD_SWITCH, empty, 1, out, sizeof(out)), -1);
    ck_assert_int_eq(ctl_request_format(CTL_CMD_COUNT_, NULL, 0, out, sizeof(out)), -1);
    /* Does not fit: "switch " + 20 escaped bytes = 67 > 64. */
    const char *wide[1] = { "                    " };
    ck_assert_int_eq(ctl_request_format(CTL_CMD_SWITCH, wide, 1, out, sizeof(out)), -1);
    ck_assert_int_eq(ctl_request_format(CTL_CMD_STATUS, NULL, 0, out, 7), -1); /* "status\n" + NUL = 8 */
    ck_assert_int_eq(ctl_request_format(CTL_CMD_STATUS, NULL, 0, out, 8), 7);
}
END_TEST

START_TEST(name_table)
{
    /* Every word parses back to its command (with the arguments it needs). */
    const char *const sample_args[CTL_CMD_COUNT_] = {
        [CTL_CMD_SWITCH] = " x", [CTL_CMD_LOGIN] = " u p", [CTL_CMD_PIN] = " 1234", [CTL_CMD_UNLOAD] = " x",
    };
    for (int c = 0; c < CTL_CMD_COUNT_; c++) {
        char line[64];
        snprintf(line, sizeof(line), "%s%s", ctl_cmd_name((ctl_cmd)c), sample_args[c] ? sample_args[c] : "");
        ck_assert_int_eq(parse(line), 0);
        ck_assert_int_eq(req.cmd, c);
    }
    ck_assert_str_eq(ctl_cmd_name(CTL_CMD_COUNT_), "unknown");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tools-control");
    TCase *tc = tcase_create("codec");
    tcase_add_test(tc, plain_commands);
    tcase_add_test(tc, percent_decoding);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, error_text_never_quotes_a_secret);
    tcase_add_test(tc, length_bounds);
    tcase_add_test(tc, format_round_trip);
    tcase_add_test(tc, format_refusals);
    tcase_add_test(tc, name_table);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
