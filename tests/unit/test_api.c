/* SPDX-License-Identifier: Apache-2.0 */
/* lib/api: error table, argument validation, engine drive, command queue. */
#include <check.h>
#include <m2mvpn/m2mvpn.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/handle.h"

static const char *const psk_profile =
    "{\"version\": 1, \"name\": \"atm-eu\", \"mode\": \"manual\","
    " \"gateways\": [{\"host\": \"198.51.100.1\"}],"
    " \"local_id\": \"dev1.m2m.test\", \"remote_id\": \"gw.m2m.test\","
    " \"auth\": {\"method\": \"psk\", \"psk\": \"s3cret-psk-value\"}}";

static const char *const two_profiles =
    "{\"profiles\": ["
    " {\"version\": 1, \"name\": \"p1\", \"mode\": \"manual\", \"gateways\": [{\"host\": \"198.51.100.1\"}],"
    "  \"local_id\": \"a\", \"remote_id\": \"gw\", \"auth\": {\"method\": \"psk\", \"psk\": \"x\"},"
    "  \"tunnel\": {\"kill_switch\": false}},"
    " {\"version\": 1, \"name\": \"p2\", \"mode\": \"manual\", \"gateways\": [{\"host\": \"198.51.100.2\"}],"
    "  \"local_id\": \"a\", \"remote_id\": \"gw\", \"auth\": {\"method\": \"psk\", \"psk\": \"y\"},"
    "  \"tunnel\": {\"kill_switch\": false}}]}";

static m2mvpn *new_handle(void)
{
    m2mvpn *h = NULL;
    ck_assert_int_eq(m2mvpn_new(NULL, NULL, &h), 0);
    ck_assert_ptr_nonnull(h);
    return h;
}

/* Drive an externally-driven handle until every queued command ran. */
static void process_all(m2mvpn *h)
{
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&h->lock);
        bool done = h->cmds_done == h->cmds_queued;
        pthread_mutex_unlock(&h->lock);
        if (done)
            return;
        ck_assert_int_eq(m2mvpn_process(h), 0);
    }
    ck_abort_msg("commands never completed");
}

/* ----------------------------------------------------------- errors */

START_TEST(every_error_has_a_distinct_message)
{
    const int codes[] = {
#define XX(name, value, msg) M2MVPN_E_##name,
        M2MVPN_ERROR_MAP(XX)
#undef XX
    };
    size_t n = sizeof(codes) / sizeof(codes[0]);
    ck_assert_uint_ge(n, 20);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_lt(codes[i], 0);
        const char *m = m2mvpn_strerror(codes[i]);
        ck_assert_str_ne(m, "unknown error");
        for (size_t j = 0; j < i; j++) {
            ck_assert_int_ne(codes[i], codes[j]);
            ck_assert_str_ne(m, m2mvpn_strerror(codes[j]));
        }
    }
    ck_assert_str_eq(m2mvpn_strerror(0), "success");
    ck_assert_str_eq(m2mvpn_strerror(-9999), "unknown error");
    ck_assert_str_eq(m2mvpn_strerror(42), "unknown error");
    /* Values are part of the ABI: spot-check that they never move. */
    ck_assert_int_eq(M2MVPN_E_INVAL, -1);
    ck_assert_int_eq(M2MVPN_E_NOTSUPP, -3);
    ck_assert_int_eq(M2MVPN_E_PROFILE, -8);
}
END_TEST

START_TEST(names_of_errors_states_events)
{
#define XX(name, value, msg) ck_assert_str_eq(m2mvpn_error_name(M2MVPN_E_##name), #name);
    M2MVPN_ERROR_MAP(XX)
#undef XX
    ck_assert_str_eq(m2mvpn_error_name(0), "");
    ck_assert_str_eq(m2mvpn_error_name(-4242), "UNKNOWN");
    const char *states[] = { "idle", "connecting", "connected", "reconnecting", "disconnecting" };
    for (int i = 0; i < 5; i++)
        ck_assert_str_eq(m2mvpn_state_name(i), states[i]);
    ck_assert_str_eq(m2mvpn_state_name(5), "unknown");
    ck_assert_str_eq(m2mvpn_state_name(-1), "unknown");
    ck_assert_str_eq(m2mvpn_event_name(M2MVPN_EVENT_STATE_CHANGED), "STATE_CHANGED");
    ck_assert_str_eq(m2mvpn_event_name(M2MVPN_EVENT_PIN_REQUIRED), "PIN_REQUIRED");
    ck_assert_str_eq(m2mvpn_event_name(M2MVPN_EVENT_CERT_RENEWED), "CERT_RENEWED");
    ck_assert_str_eq(m2mvpn_event_name(0), "UNKNOWN");
    ck_assert_str_eq(m2mvpn_event_name(99), "UNKNOWN");
}
END_TEST

START_TEST(version_matches_header)
{
    ck_assert_str_eq(m2mvpn_version(), M2MVPN_VERSION_STRING);
    char buf[32];
    snprintf(buf, sizeof(buf), "%d.%d.%d", M2MVPN_VERSION_MAJOR, M2MVPN_VERSION_MINOR, M2MVPN_VERSION_PATCH);
    ck_assert_str_eq(m2mvpn_version(), buf);
}
END_TEST

/* ------------------------------------------------------ validation */

START_TEST(new_validates_arguments)
{
    ck_assert_int_eq(m2mvpn_new(NULL, NULL, NULL), M2MVPN_E_INVAL);
    m2mvpn_callbacks cbs = { .struct_size = 0 };
    m2mvpn *h = (m2mvpn *)0x1;
    ck_assert_int_eq(m2mvpn_new(&cbs, NULL, &h), M2MVPN_E_INVAL);
    ck_assert_ptr_eq(h, (m2mvpn *)0x1); /* output untouched on failure */
    cbs.struct_size = sizeof(cbs);
    h = NULL;
    ck_assert_int_eq(m2mvpn_new(&cbs, NULL, &h), 0);
    m2mvpn_free(h);
    m2mvpn_free(NULL); /* fine */
}
END_TEST

START_TEST(calls_refuse_bad_handles)
{
    struct m2mvpn fake;
    memset(&fake, 0, sizeof(fake)); /* no magic */
    m2mvpn *bad[2] = { NULL, &fake };
    m2mvpn_status st = { .struct_size = sizeof(st) };
    char *js = NULL;
    for (int i = 0; i < 2; i++) {
        m2mvpn *h = bad[i];
        ck_assert_int_eq(m2mvpn_profile_load_file(h, "x.json"), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_profile_load_json(h, "{}", 2), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_profile_switch(h, "a"), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_profile_unload(h, "a"), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_connect(h), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_disconnect(h), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_set_credentials(h, "u", "p"), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_enter_pin(h, "1234", 4), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_get_status(h, &st), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_status_json(h, &js), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_start(h), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_stop(h), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_get_fd(h), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_get_timeout_ms(h), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_process(h), M2MVPN_E_BADHANDLE);
        ck_assert_int_eq(m2mvpn_set_log(h, NULL, 0, NULL), M2MVPN_E_BADHANDLE);
        ck_assert_str_eq(m2mvpn_last_error(h), "not a valid m2mvpn handle");
        m2mvpn_free(h); /* ignored */
    }
    ck_assert_ptr_null(js);
}
END_TEST

START_TEST(calls_refuse_bad_arguments)
{
    m2mvpn *h = new_handle();
    ck_assert_int_eq(m2mvpn_profile_load_file(h, NULL), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_profile_load_file(h, ""), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_profile_load_json(h, NULL, 3), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_profile_load_json(h, "{}", 0), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_profile_switch(h, NULL), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_profile_switch(h, ""), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_set_credentials(h, "u", NULL), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_set_credentials(h, "", "p"), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_enter_pin(h, NULL, 4), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_enter_pin(h, "1234", 0), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_enter_pin(h, "12\0004", 4), M2MVPN_E_INVAL);
    char longpin[300];
    memset(longpin, '1', sizeof(longpin));
    ck_assert_int_eq(m2mvpn_enter_pin(h, longpin, sizeof(longpin)), M2MVPN_E_INVAL);
    ck_assert_ptr_null(strstr(m2mvpn_last_error(h), "1111")); /* the PIN is not echoed */
    ck_assert_int_eq(m2mvpn_set_log(h, NULL, 4, NULL), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_set_log(h, NULL, -1, NULL), M2MVPN_E_INVAL);
    ck_assert(strstr(m2mvpn_last_error(h), "level") != NULL);
    m2mvpn_status st;
    memset(&st, 0x5a, sizeof(st));
    st.struct_size = 4;
    ck_assert_int_eq(m2mvpn_get_status(h, &st), M2MVPN_E_INVAL);
    ck_assert_uint_eq(st.struct_size, 4);
    ck_assert_int_eq(m2mvpn_get_status(h, NULL), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_status_json(h, NULL), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_stop(h), M2MVPN_E_STATE); /* never started */
    m2mvpn_free(h);
}
END_TEST

START_TEST(profile_errors_name_what_is_wrong)
{
    m2mvpn *h = new_handle();
    ck_assert_int_eq(m2mvpn_profile_load_json(h, "{\"version\": 1,", 14), M2MVPN_E_JSON);
    const char *unknown = "{\"version\": 1, \"name\": \"a\", \"gateways\": [{\"host\": \"h\"}],"
                          " \"remote_id\": \"gw\", \"local_id\": \"me\","
                          " \"auth\": {\"method\": \"psk\", \"psk\": \"x\"}, \"tunel\": {}}";
    ck_assert_int_eq(m2mvpn_profile_load_json(h, unknown, strlen(unknown)), M2MVPN_E_PROFILE);
    ck_assert_ptr_nonnull(strstr(m2mvpn_last_error(h), "tunel"));
    ck_assert_int_eq(m2mvpn_profile_load_file(h, "/nonexistent/m2m.json"), M2MVPN_E_IO);
    ck_assert_ptr_nonnull(strstr(m2mvpn_last_error(h), "/nonexistent/m2m.json"));
    /* Nothing was installed by the failures. */
    ck_assert_int_eq(m2mvpn_connect(h), M2MVPN_E_NOPROFILE);
    m2mvpn_status st = { .struct_size = sizeof(st) };
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_str_eq(st.profile, "");
    m2mvpn_free(h);
}
END_TEST

START_TEST(profiles_load_and_switch)
{
    m2mvpn *h = new_handle();
    ck_assert_int_eq(m2mvpn_profile_load_json(h, two_profiles, strlen(two_profiles)), 0);
    m2mvpn_status st = { .struct_size = sizeof(st) };
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_str_eq(st.profile, "p1"); /* first loaded is active */
    ck_assert_int_eq(m2mvpn_profile_switch(h, "nope"), M2MVPN_E_NOPROFILE);
    ck_assert_ptr_nonnull(strstr(m2mvpn_last_error(h), "'nope'"));
    ck_assert_int_eq(m2mvpn_profile_switch(h, "p2"), 0);
    process_all(h);
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_str_eq(st.profile, "p2");
    /* Loading a profile of the same name replaces it; the set stays usable. */
    ck_assert_int_eq(m2mvpn_profile_load_json(h, psk_profile, strlen(psk_profile)), 0);
    ck_assert_int_eq(m2mvpn_profile_switch(h, "atm-eu"), 0);
    ck_assert_int_eq(m2mvpn_profile_switch(h, "p1"), 0);
    process_all(h);
    m2mvpn_free(h);
}
END_TEST

START_TEST(profiles_unload)
{
    m2mvpn *h = new_handle();
    ck_assert_int_eq(m2mvpn_profile_unload(h, "p1"), M2MVPN_E_NOPROFILE);
    ck_assert_int_eq(m2mvpn_profile_unload(h, NULL), M2MVPN_E_INVAL);
    ck_assert_int_eq(m2mvpn_profile_load_json(h, two_profiles, strlen(two_profiles)), 0);
    ck_assert_int_eq(m2mvpn_profile_unload(h, "p1"), 0); /* the active one */
    process_all(h);
    m2mvpn_status st = { .struct_size = sizeof(st) };
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_str_eq(st.profile, "p2"); /* the other one takes over */
    ck_assert_int_eq(m2mvpn_profile_switch(h, "p1"), M2MVPN_E_NOPROFILE);
    ck_assert_int_eq(m2mvpn_profile_unload(h, "p1"), M2MVPN_E_NOPROFILE);
    ck_assert_int_eq(m2mvpn_profile_unload(h, "p2"), 0);
    process_all(h);
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_str_eq(st.profile, "");
    ck_assert_int_eq(m2mvpn_connect(h), M2MVPN_E_NOPROFILE);
    /* Loaded again: there again. */
    ck_assert_int_eq(m2mvpn_profile_load_json(h, two_profiles, strlen(two_profiles)), 0);
    ck_assert_int_eq(m2mvpn_profile_switch(h, "p1"), 0);
    process_all(h);
    m2mvpn_free(h);
}
END_TEST

START_TEST(status_json_has_state)
{
    m2mvpn *h = new_handle();
    char *js = NULL;
    ck_assert_int_eq(m2mvpn_status_json(h, &js), 0);
    ck_assert_ptr_nonnull(strstr(js, "\"state\":\"idle\""));
    ck_assert_ptr_nonnull(strstr(js, "\"version\":\"" M2MVPN_VERSION_STRING "\""));
    ck_assert_ptr_nonnull(strstr(js, "\"last_error\":"));
    m2mvpn_string_free(js);
    ck_assert_int_eq(m2mvpn_profile_load_json(h, psk_profile, strlen(psk_profile)), 0);
    ck_assert_int_eq(m2mvpn_status_json(h, &js), 0);
    ck_assert_ptr_nonnull(strstr(js, "\"profile\":\"atm-eu\""));
    ck_assert_ptr_null(strstr(js, "s3cret")); /* the PSK never reaches status */
    m2mvpn_string_free(js);
    m2mvpn_status st = { .struct_size = offsetof(m2mvpn_status, profile) }; /* an older, smaller struct */
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_int_eq(st.state, M2MVPN_STATE_IDLE);
    m2mvpn_free(h);
}
END_TEST

/* A handle whose profiles use no management has none set up (it is made
 * when a bootstrap first runs): the calls that need it say so. */
START_TEST(without_management_its_calls_say_off)
{
    m2mvpn *h = new_handle();
    ck_assert_int_eq(m2mvpn_profile_load_json(h, psk_profile, strlen(psk_profile)), 0);
    ck_assert_int_eq(m2mvpn_decommission(h), M2MVPN_E_STATE);
    ck_assert_msg(strstr(m2mvpn_last_error(h), "not an enrolled managed device (management state off)") != NULL,
                  "%s", m2mvpn_last_error(h));
    ck_assert_int_eq(m2mvpn_update_result(h, "1.2.3", 1, "ok"), M2MVPN_E_STATE);
    ck_assert_msg(strstr(m2mvpn_last_error(h), "no update 1.2.3 was handed over") != NULL, "%s",
                  m2mvpn_last_error(h));
    char *js = NULL;
    ck_assert_int_eq(m2mvpn_status_json(h, &js), 0);
    ck_assert_msg(strstr(js, "\"management\":null") != NULL, "%s", js);
    m2mvpn_string_free(js);
    m2mvpn_free(h);
}
END_TEST

/* A PSK shorter than 20 characters loads (gateways' keys keep working) but is
 * warned about in the log and the status, by its length class, never its
 * value; 20 characters are fine. */
typedef struct log_capture {
    char text[4096];
    size_t used;
} log_capture;

static void capture_log(m2mvpn *h, int level, const char *sub, const char *msg, void *ud)
{
    (void)h;
    log_capture *c = ud;
    if (level <= M2MVPN_LOG_WARNING && c->used < sizeof(c->text))
        c->used += (size_t)snprintf(c->text + c->used, sizeof(c->text) - c->used, "%s: %s\n", sub, msg);
}

static char *psk_profile_json(const char *name, const char *psk)
{
    static char buf[512];
    snprintf(buf, sizeof(buf),
             "{\"version\": 1, \"name\": \"%s\", \"mode\": \"manual\","
             " \"gateways\": [{\"host\": \"198.51.100.1\"}], \"local_id\": \"a\", \"remote_id\": \"gw\","
             " \"auth\": {\"method\": \"psk\", \"psk\": \"%s\"}, \"tunnel\": {\"kill_switch\": false}}",
             name, psk);
    return buf;
}

#define PSK_WARNING "auth.psk has fewer than 20 characters: a man in the middle can guess a weak pre-shared key offline"

START_TEST(short_psk_is_warned_in_status_and_log)
{
    m2mvpn *h = new_handle();
    log_capture logs = { .used = 0 };
    ck_assert_int_eq(m2mvpn_set_log(h, capture_log, M2MVPN_LOG_WARNING, &logs), 0);
    const char *weak = "Weak-PSK-19-chars-x", *good = "Good-PSK-20-chars-xy";
    ck_assert_uint_eq(strlen(weak), 19);
    ck_assert_uint_eq(strlen(good), 20);
    char *js = psk_profile_json("weak", weak);
    ck_assert_int_eq(m2mvpn_profile_load_json(h, js, strlen(js)), 0);
    process_all(h);

    char *status = NULL;
    ck_assert_int_eq(m2mvpn_status_json(h, &status), 0);
    ck_assert_msg(strstr(status, "\"warnings\":[\"" PSK_WARNING) != NULL, "%s", status);
    ck_assert_ptr_null(strstr(status, weak));
    m2mvpn_string_free(status);
    m2mvpn_status st = { .struct_size = sizeof(st) };
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_ptr_nonnull(strstr(st.warnings, PSK_WARNING));
    ck_assert_ptr_null(strstr(st.warnings, weak));
    ck_assert_msg(strstr(logs.text, "conn: profile weak: " PSK_WARNING) != NULL, "log: %s", logs.text);
    ck_assert_ptr_null(strstr(logs.text, weak));

    /* An older caller's struct ends before `warnings`: nothing written there. */
    memset(&st, 'X', sizeof(st));
    st.struct_size = offsetof(m2mvpn_status, warnings);
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_int_eq(st.warnings[0], 'X');

    /* 20 characters: no warning, in the status or the log. */
    js = psk_profile_json("good", good);
    ck_assert_int_eq(m2mvpn_profile_load_json(h, js, strlen(js)), 0);
    logs.used = 0;
    logs.text[0] = '\0';
    ck_assert_int_eq(m2mvpn_profile_switch(h, "good"), 0);
    process_all(h);
    ck_assert_int_eq(m2mvpn_status_json(h, &status), 0);
    ck_assert_msg(strstr(status, "\"warnings\":[]") != NULL, "%s", status);
    m2mvpn_string_free(status);
    st = (m2mvpn_status){ .struct_size = sizeof(st) };
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_str_eq(st.profile, "good");
    ck_assert_str_eq(st.warnings, "");
    ck_assert_ptr_null(strstr(logs.text, "auth.psk"));
    m2mvpn_free(h);
}
END_TEST

/* EAP credentials are accepted (queued for the engine), also before any
 * profile is loaded; bad arguments are refused with the reason. */
START_TEST(credentials_are_queued)
{
    m2mvpn *h = new_handle();
    ck_assert_int_eq(m2mvpn_set_credentials(h, "dev1", "pw"), 0);
    ck_assert_int_eq(m2mvpn_set_credentials(h, NULL, "pw"), 0);
    ck_assert_int_eq(m2mvpn_set_credentials(h, "dev1", ""), M2MVPN_E_INVAL);
    ck_assert_ptr_nonnull(strstr(m2mvpn_last_error(h), "password is empty"));
    m2mvpn_free(h);
}
END_TEST

/* ---------------------------------------------------------- engine */

typedef struct {
    m2mvpn *h;
    int id;
} worker_arg;

static void *switch_many(void *arg)
{
    worker_arg *w = arg;
    for (int i = 0; i < 500; i++)
        ck_assert_int_eq(m2mvpn_profile_switch(w->h, (i + w->id) % 2 ? "p1" : "p2"), 0);
    return NULL;
}

START_TEST(commands_from_four_threads_all_arrive)
{
    m2mvpn *h = new_handle();
    ck_assert_int_eq(m2mvpn_profile_load_json(h, two_profiles, strlen(two_profiles)), 0);
    ck_assert_int_eq(m2mvpn_start(h), 0);
    ck_assert_int_eq(m2mvpn_start(h), M2MVPN_E_BUSY);
    ck_assert_int_eq(m2mvpn_process(h), M2MVPN_E_BUSY);
    ck_assert_int_eq(m2mvpn_get_fd(h), M2MVPN_E_BUSY);
    pthread_t t[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){ h, i };
        ck_assert_int_eq(pthread_create(&t[i], NULL, switch_many, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    /* The engine thread drains the queue on its own. */
    uint64_t queued = 0, done = 0;
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&h->lock);
        queued = h->cmds_queued;
        done = h->cmds_done;
        pthread_mutex_unlock(&h->lock);
        if (done == queued)
            break;
        usleep(10000);
    }
    ck_assert_uint_eq(queued, 1 + 4 * 500); /* the profile load + every switch */
    ck_assert_uint_eq(done, queued);
    ck_assert_int_eq(m2mvpn_stop(h), 0);
    ck_assert_int_eq(m2mvpn_stop(h), M2MVPN_E_STATE);
    m2mvpn_free(h);
}
END_TEST

/* Written by the callback on the engine thread, polled by the test's thread:
 * atomics, so the polling is not a data race (TSan). */
typedef struct {
    atomic_int lines;
    atomic_int stop_rc;
    atomic_int switch_rc;
    atomic_int process_rc;
    atomic_int seen;
} cb_state;

/* Log hook that acts like an application callback on the engine thread. */
static void stop_from_callback(m2mvpn *h, int level, const char *sub, const char *msg, void *ud)
{
    (void)level;
    (void)sub;
    cb_state *s = ud;
    s->lines++;
    if (strstr(msg, "active profile is now 'p2'") && !s->seen) {
        s->seen = 1;
        s->switch_rc = m2mvpn_profile_switch(h, "p1"); /* control calls are fine */
        s->process_rc = m2mvpn_process(h);             /* re-entering is not */
        s->stop_rc = m2mvpn_stop(h);                   /* returns at once */
        m2mvpn_free(h);                                /* refused, handle intact */
    }
}

START_TEST(stop_from_a_callback)
{
    m2mvpn *h = new_handle();
    cb_state s = { .stop_rc = 99, .switch_rc = 99, .process_rc = 99 };
    ck_assert_int_eq(m2mvpn_set_log(h, stop_from_callback, M2MVPN_LOG_INFO, &s), 0);
    ck_assert_int_eq(m2mvpn_profile_load_json(h, two_profiles, strlen(two_profiles)), 0);
    ck_assert_int_eq(m2mvpn_start(h), 0);
    ck_assert_int_eq(m2mvpn_profile_switch(h, "p2"), 0);
    for (int i = 0; i < 500 && !s.seen; i++)
        usleep(10000);
    ck_assert_int_eq(s.seen, 1);
    /* The thread leaves its loop by itself; a new start joins it first. */
    for (int i = 0; i < 200 && s.stop_rc == 99; i++)
        usleep(10000);
    ck_assert_int_eq(s.stop_rc, 0);
    ck_assert_int_eq(s.switch_rc, 0);
    ck_assert_int_eq(s.process_rc, M2MVPN_E_CALLBACK);
    ck_assert_int_eq(m2mvpn_start(h), 0); /* restart after a stop from a callback */
    ck_assert_int_eq(m2mvpn_stop(h), 0);
    m2mvpn_free(h);
}
END_TEST

static void *stop_it(void *arg)
{
    return (void *)(intptr_t)m2mvpn_stop(arg);
}

/* Two threads stop at once (a signal thread and the main shutdown): one
 * stops the engine, the other is told it is not running; nothing is joined twice. */
START_TEST(concurrent_stops)
{
    for (int round = 0; round < 20; round++) {
        m2mvpn *h = new_handle();
        ck_assert_int_eq(m2mvpn_start(h), 0);
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            ck_assert_int_eq(pthread_create(&t[i], NULL, stop_it, h), 0);
        int ok = 0, state = 0;
        for (int i = 0; i < 2; i++) {
            void *rv;
            pthread_join(t[i], &rv);
            int r = (int)(intptr_t)rv;
            ok += r == 0;
            state += r == M2MVPN_E_STATE;
        }
        ck_assert_int_eq(ok, 1);
        ck_assert_int_eq(state, 1);
        ck_assert_int_eq(m2mvpn_start(h), 0); /* and it can run again */
        m2mvpn_free(h);
    }
}
END_TEST

START_TEST(external_loop_mode)
{
    m2mvpn *h = new_handle();
    int fd = m2mvpn_get_fd(h);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(m2mvpn_start(h), M2MVPN_E_BUSY); /* driven externally now */
    ck_assert_int_eq(m2mvpn_get_timeout_ms(h), -1);   /* nothing to do */
    ck_assert_int_eq(m2mvpn_profile_load_json(h, two_profiles, strlen(two_profiles)), 0);
    ck_assert_int_eq(m2mvpn_profile_switch(h, "p2"), 0);
    ck_assert_int_eq(m2mvpn_get_timeout_ms(h), 0); /* commands wait */
    struct pollfd p = { .fd = fd, .events = POLLIN };
    ck_assert_int_eq(poll(&p, 1, 1000), 1);         /* the fd says so too */
    m2mvpn_status st = { .struct_size = sizeof(st) };
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_str_eq(st.profile, "p1");             /* not yet processed */
    ck_assert_int_eq(m2mvpn_process(h), 0);
    ck_assert_int_eq(m2mvpn_get_status(h, &st), 0);
    ck_assert_str_eq(st.profile, "p2");
    ck_assert_int_eq(m2mvpn_get_timeout_ms(h), -1);
    p.revents = 0;
    ck_assert_int_eq(poll(&p, 1, 0), 0);            /* quiet again */
    m2mvpn_free(h);
}
END_TEST

static Suite *api_suite(void)
{
    Suite *s = suite_create("api");
    TCase *e = tcase_create("errors");
    tcase_add_test(e, every_error_has_a_distinct_message);
    tcase_add_test(e, names_of_errors_states_events);
    tcase_add_test(e, version_matches_header);
    suite_add_tcase(s, e);
    TCase *v = tcase_create("validation");
    tcase_add_test(v, new_validates_arguments);
    tcase_add_test(v, calls_refuse_bad_handles);
    tcase_add_test(v, calls_refuse_bad_arguments);
    tcase_add_test(v, profile_errors_name_what_is_wrong);
    tcase_add_test(v, profiles_load_and_switch);
    tcase_add_test(v, profiles_unload);
    tcase_add_test(v, status_json_has_state);
    tcase_add_test(v, without_management_its_calls_say_off);
    tcase_add_test(v, short_psk_is_warned_in_status_and_log);
    tcase_add_test(v, credentials_are_queued);
    suite_add_tcase(s, v);
    TCase *g = tcase_create("engine");
    tcase_set_timeout(g, 30);
    tcase_add_test(g, commands_from_four_threads_all_arrive);
    tcase_add_test(g, stop_from_a_callback);
    tcase_add_test(g, concurrent_stops);
    tcase_add_test(g, external_loop_mode);
    suite_add_tcase(s, g);
    return s;
}

int main(void)
{
    /* Loading a profile may set up its kill switch (TUN, routes): as root,
     * keep whatever the engine does in a network namespace of this test. */
    if (geteuid() == 0 && unshare(CLONE_NEWNET) != 0) {
        perror("unshare(CLONE_NEWNET)");
        return 1;
    }
    SRunner *sr = srunner_create(api_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
