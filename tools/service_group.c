/* SPDX-License-Identifier: Apache-2.0 */
/* The control group: see service_group.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* SO_PEERGROUPS, struct ucred */
#endif
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "service_group.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

int svc_group_lookup(const char *name, gid_t *gid, char *err, size_t err_len)
{
    if (!name || !*name) {
        snprintf(err, err_len, "--control-group: empty group name");
        return -1;
    }
    char buf[16384];
    struct group gr, *found = NULL;
    int r = getgrnam_r(name, &gr, buf, sizeof(buf), &found);
    if (r == 0 && found) {
        *gid = found->gr_gid;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long v = strtoul(name, &end, 10);
    if (name[0] >= '0' && name[0] <= '9' && !*end && !errno && v < (unsigned long)SVC_NO_GROUP) {
        *gid = (gid_t)v;
        return 0;
    }
    snprintf(err, err_len, "--control-group: no group named '%s'%s%s", name, r ? ": " : "", r ? strerror(r) : "");
    return -1;
}

int svc_dir_open_to_group(const char *dir, gid_t gid, bool *changed, char *err, size_t err_len)
{
    *changed = false;
    struct stat st;
    if (stat(dir, &st) < 0) {
        snprintf(err, err_len, "cannot inspect folder %s: %s", dir, strerror(errno));
        return -1;
    }
    if ((st.st_mode & S_IXOTH) || (st.st_gid == gid && (st.st_mode & S_IXGRP)))
        return 0; /* the group can already reach the socket */
    if (st.st_uid != geteuid() || (st.st_mode & (S_IRWXG | S_IRWXO))) {
        snprintf(err, err_len, "folder %s does not let group %u reach the control socket: give it that group and "
                 "mode 0710, or remove it so the service makes it", dir, (unsigned)gid);
        return -1;
    }
    if (chown(dir, (uid_t)-1, gid) < 0 || chmod(dir, (st.st_mode & 07777) | S_IXGRP) < 0) {
        snprintf(err, err_len, "cannot open folder %s to group %u: %s", dir, (unsigned)gid, strerror(errno));
        return -1;
    }
    *changed = true;
    return 0;
}

static bool peer_in_group(int fd, gid_t primary, gid_t group)
{
    if (primary == group)
        return true;
    /* Start small; the kernel says how much it needs (ERANGE). */
    socklen_t len = 64 * sizeof(gid_t);
    gid_t *groups = NULL;
    for (int tries = 0; tries < 2; tries++) {
        gid_t *grown = realloc(groups, len ? len : sizeof(gid_t));
        if (!grown)
            break;
        groups = grown;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
            bool member = false;
            for (size_t i = 0; i < len / sizeof(gid_t) && !member; i++)
                member = groups[i] == group;
            free(groups);
            return member;
        }
        if (errno != ERANGE)
            break;
    }
    free(groups);
    return false;
}

svc_peer_role svc_peer_role_of(int fd, gid_t group, uid_t *uid, pid_t *pid)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred))
        return SVC_PEER_REFUSED;
    *uid = cred.uid;
    *pid = cred.pid;
    if (cred.uid == 0 || cred.uid == geteuid())
        return SVC_PEER_OWNER;
    if (group != SVC_NO_GROUP && peer_in_group(fd, cred.gid, group))
        return SVC_PEER_OPERATOR;
    return SVC_PEER_REFUSED;
}

bool svc_role_may(svc_peer_role role, ctl_cmd cmd)
{
    switch (role) {
    case SVC_PEER_OWNER:
        return true;
    case SVC_PEER_OPERATOR:
        return cmd == CTL_CMD_STATUS || cmd == CTL_CMD_CONNECT || cmd == CTL_CMD_DISCONNECT ||
               cmd == CTL_CMD_SWITCH || cmd == CTL_CMD_LOGIN || cmd == CTL_CMD_PIN;
    case SVC_PEER_REFUSED:
        break;
    }
    return false;
}
