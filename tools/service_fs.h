/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Files and sockets of the service: its state folder, pid file and the
 * listening control socket. Every function reports a failure as one line in
 * err (without a "m2mvpn:" prefix) and returns -1.
 */
#ifndef M2MVPN_TOOLS_SERVICE_FS_H
#define M2MVPN_TOOLS_SERVICE_FS_H

#include <stddef.h>
#include <sys/types.h>

#define SVC_PID_FILE "m2mvpn.pid"
#define SVC_LOG_FILE "m2mvpn.log"

/**
 * Make sure `dir` is a folder only we can change: create it with mode 0700 if
 * it is missing (its parent must exist). An existing folder that group or
 * others may write (sticky bit or not), or that belongs to a user other than
 * root or us, is refused: someone could swap our files. So is a symbolic
 * link in its place, and a folder on the way to it (resolved) that belongs
 * to another user or that group or others may write without the sticky bit.
 */
int svc_prepare_dir(const char *dir, char *err, size_t err_len);

/** The folder part of `path` into out ("." if none). -1 if it does not fit. */
int svc_dirname(const char *path, char *out, size_t cap);

/**
 * Create the control socket at `path` with mode 0600, or 0660 owned by
 * `group` unless that is (gid_t)-1 (see service_group.h) (non-blocking,
 * close-on-exec) in a folder prepared by svc_prepare_dir(), bound but not yet
 * listening: connections are refused until the caller's listen(), so nobody
 * sees the service before it is completely set up. A stale socket left by a
 * crashed service is replaced; a live one (something accepts connections) or
 * a path that is not a socket is refused. Returns the fd, already listening,
 * under a temporary name until svc_bind_publish(path) renames it into place.
 */
int svc_bind(const char *path, gid_t group, char *err, size_t err_len);
int svc_bind_publish(const char *path, char *err, size_t err_len);

/**
 * Who is on the other end of an accepted connection (SO_PEERCRED). Returns 1
 * if that peer may use the service (root or our own uid), 0 if not, -1 if the
 * credentials cannot be read (treated as "not allowed" by the caller).
 */
int svc_peer_allowed(int fd, uid_t *uid, pid_t *pid);

/** Atomically write our pid to dir/m2mvpn.pid (temp file, fsync, rename). */
int svc_pidfile_write(const char *dir, char *err, size_t err_len);

/** Remove dir/m2mvpn.pid if it still names this process. */
void svc_pidfile_remove(const char *dir);

/** Read the pid in dir/m2mvpn.pid: > 0, or -1 if missing or malformed. */
pid_t svc_pidfile_read(const char *dir);

#endif
