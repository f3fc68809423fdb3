/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The operator group of the control socket (`--control-group GROUP`).
 *
 * Trust model (docs/cli.md "Who may use the service"): root and the
 * service's own user may send every request. With a control group, the
 * socket becomes 0660 root-or-service-user:GROUP in a folder the group may
 * search but not write, and members of GROUP (primary or supplementary, read
 * with SO_PEERCRED / SO_PEERGROUPS on each connection) may send the operator
 * requests: status, connect, disconnect, switch, login and pin. Requests that
 * end the service or take the device out of the VPN (stop, unload, which
 * removes the kill switch) stay with root and the service's user.
 */
#ifndef M2MVPN_TOOLS_SERVICE_GROUP_H
#define M2MVPN_TOOLS_SERVICE_GROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "control.h"

#define SVC_NO_GROUP ((gid_t)-1)

typedef enum svc_peer_role {
    SVC_PEER_REFUSED = 0,
    SVC_PEER_OWNER = 1,    /* root or the service's own uid: every request */
    SVC_PEER_OPERATOR = 2, /* a member of the control group: operator requests */
} svc_peer_role;

/** A group name, or a decimal gid, into *gid; -1 with err if there is no such group. */
int svc_group_lookup(const char *name, gid_t *gid, char *err, size_t err_len);

/**
 * Let `gid` reach the control socket in `dir` (a folder svc_prepare_dir()
 * accepted). A folder that others, or that group, may already search is left
 * as it is. A folder closed to everyone else and owned by us (the one the
 * service made) gets that group and group search permission (0710): members
 * can open the socket but neither list nor change the folder. Any other
 * folder is refused with a line saying what to change. *changed tells
 * whether the folder was changed.
 */
int svc_dir_open_to_group(const char *dir, gid_t gid, bool *changed, char *err, size_t err_len);

/**
 * Who is on the other end of an accepted connection, and what they may do.
 * `group` is SVC_NO_GROUP without a control group. Fills *uid and *pid;
 * returns the role (SVC_PEER_REFUSED if the credentials cannot be read).
 */
svc_peer_role svc_peer_role_of(int fd, gid_t group, uid_t *uid, pid_t *pid);

/** Whether a peer of this role may send `cmd`. */
bool svc_role_may(svc_peer_role role, ctl_cmd cmd);

#endif
