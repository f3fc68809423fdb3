/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection supervisor: turns "connect this profile" into a running
 * tunnel and keeps it so. It owns, per connection attempt, the port-500
 * socket, the credential provider and trust anchors and the IKE SA; and, while
 * a profile is in use, the ESP datapath (shared UDP/4500 socket, TUN, routes,
 * kill switch). It reports tunnel state and status through hooks that the API
 * layer turns into events.
 *
 * Modes (profile "mode"): always-on reconnects after a failure with
 * exponential backoff (1 s doubling to 60 s) and fails over through the
 * gateway list, except after failures a retry cannot fix (PIN, CERT,
 * PROFILE, NOTSUPP: a wrong PIN is never retried; an EAP password the
 * gateway refused (AUTH_LOCAL) is never sent again: the profile waits for
 * new credentials); on-demand and manual connect once when asked and stay down
 * after a failure (the error is reported).
 *
 * Everything runs on the engine thread.
 */
#ifndef M2MVPN_CONN_H
#define M2MVPN_CONN_H

#include <m2mvpn/m2mvpn.h>

#include "core/log.h"
#include "core/loop.h"
#include "profile/profile.h"

typedef struct conn_hooks {
    void *arg;
    /* Tunnel state changed (the API's STATE_CHANGED); detail may be NULL. */
    void (*on_state)(void *arg, m2mvpn_state st, int err, const char *detail);
    /* Other events: PIN_REQUIRED, CREDENTIALS_REQUIRED, AUTH_FAILED. */
    void (*on_event)(void *arg, m2mvpn_event_type type, int err, const char *detail);
} conn_hooks;

typedef struct conn conn;

int conn_new(core_loop *loop, core_log *log, const conn_hooks *hooks, conn **ret);
/* Tear down without waiting for the gateway (the IKE SA is deleted best
 * effort); the kill switch stays unless conn_remove_profile() ran. NULL is fine. */
void conn_free(conn *c);

/* Use this profile from now on (a reference on its set is taken). A running
 * tunnel of another profile is closed first. */
void conn_set_profile(conn *c, profile_set *set, const profile *p);
/* Connect (again). Errors come back through on_state. */
void conn_connect(conn *c);
/* Close the tunnel and stay down. */
void conn_disconnect(conn *c);
/* A PIN for a locked credential; copied and wiped. Tried once. */
void conn_enter_pin(conn *c, const char *pin, size_t len);
/* EAP user (NULL: the profile's auth.eap.identity) and password, copied;
 * the password is wiped when replaced, refused or freed. Answers a
 * CREDENTIALS_REQUIRED wait (a new attempt starts when the tunnel is
 * wanted) or is kept for the next attempt. */
void conn_set_credentials(conn *c, const char *user, const char *pass, size_t len);
/* Name of the profile in use, or NULL. */
const char *conn_profile_name(const conn *c);
/* Remove the profile's network on purpose (kill switch included). */
void conn_remove_profile(conn *c);

/* Fill the tunnel part of a status snapshot (gateway, virtual IP, counters). */
void conn_fill_status(conn *c, m2mvpn_status *st);

/* The kill switch's layers now in place, for the status. */
typedef struct conn_kill_switch {
    bool on;                   /* the profile has tunnel.kill_switch */
    bool routing;              /* our routing table, blackholes and rules */
    bool nftables;             /* the nftables table */
    bool routing_only_allowed; /* tunnel.kill_switch_routing_only */
    char nft_why[128];         /* why no nftables table */
} conn_kill_switch;
void conn_kill_switch_status(conn *c, conn_kill_switch *out);

#endif
