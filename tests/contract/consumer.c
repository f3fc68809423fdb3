/* SPDX-License-Identifier: Apache-2.0 */
/*
 * An integrator's program, written only from the fixed signatures of
 * DESIGN.md §3 and built against the *installed* header and library through
 * pkg-config (see consumer.sh). Exit 0 when the library behaves as promised.
 */
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <string.h>

static int failures;

#define EXPECT(cond)                                                          \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "consumer.c:%d: expected %s\n", __LINE__, #cond); \
            failures++;                                                       \
        }                                                                     \
    } while (0)

static void on_event(m2mvpn *h, const m2mvpn_event *ev, void *userdata)
{
    (void)h;
    (void)ev;
    (void)userdata;
}

int main(void)
{
    m2mvpn_callbacks cbs = { sizeof(cbs), on_event };
    m2mvpn *h = NULL;
    EXPECT(m2mvpn_new(&cbs, NULL, NULL) < 0);
    EXPECT(m2mvpn_new(&cbs, NULL, &h) == 0 && h != NULL);
    if (!h)
        return 1;
    EXPECT(m2mvpn_profile_load_json(h, NULL, 0) < 0);
    EXPECT(m2mvpn_profile_switch(h, NULL) < 0);
    EXPECT(m2mvpn_enter_pin(h, NULL, 0) < 0);
    EXPECT(m2mvpn_connect(NULL) < 0);

    const char *broken = "{\"version\": 1, \"name\": ";
    EXPECT(m2mvpn_profile_load_json(h, broken, strlen(broken)) < 0);
    const char *typo = "{\"version\": 1, \"name\": \"atm\", \"gateways\": [{\"host\": \"198.51.100.1\"}],"
                       " \"local_id\": \"dev1\", \"remote_id\": \"gw\","
                       " \"auth\": {\"method\": \"psk\", \"psk\": \"k\"}, \"remote_idd\": \"x\"}";
    int r = m2mvpn_profile_load_json(h, typo, strlen(typo));
    EXPECT(r < 0);
    EXPECT(strstr(m2mvpn_last_error(h), "remote_idd") != NULL);
    EXPECT(strcmp(m2mvpn_strerror(r), "unknown error") != 0);

    char *status = NULL;
    EXPECT(m2mvpn_status_json(h, &status) == 0);
    EXPECT(status && strstr(status, "\"state\"") != NULL);
    m2mvpn_string_free(status);
    EXPECT(m2mvpn_start(h) == 0);
    EXPECT(m2mvpn_stop(h) == 0);
    EXPECT(m2mvpn_version() != NULL);
    m2mvpn_free(h);
    printf("consumer: %s (library %s)\n", failures ? "FAILED" : "ok", m2mvpn_version());
    return failures ? 1 : 0;
}
