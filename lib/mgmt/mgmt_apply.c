/* SPDX-License-Identifier: Apache-2.0 */
/* Applying a delivered profile safely (mgmt contract day N): the journal
 * apply.json and the file moves behind stage → write → try → commit, and the
 * recovery at start. Every step leaves profile.json either the previous
 * profile or the new one, whole; the persisted version (mgmt.json) moves
 * only at commit. Files only: no network, no engine. */
#include "mgmt.h"

#include "core/secmem.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOURNAL "apply.json"
#define PROFILE "profile.json"
#define NEXT "profile.next.json"
#define PREV "profile.prev.json"

static const char *const apply_names[] = {
    [MGMT_APPLY_NONE] = "none",       [MGMT_APPLY_STAGED] = "staged",       [MGMT_APPLY_WRITTEN] = "written",
    [MGMT_APPLY_TRYING] = "trying",   [MGMT_APPLY_COMMITTED] = "committed", [MGMT_APPLY_FAILED] = "failed",
};

const char *mgmt_apply_phase_name(mgmt_apply_phase p)
{
    return (size_t)p < sizeof(apply_names) / sizeof(apply_names[0]) ? apply_names[p] : "unknown";
}

static int path_of(const char *dir, const char *name, char *out, size_t cap, char *err, size_t err_len)
{
    if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap) {
        snprintf(err, err_len, "state directory path too long");
        return M2MVPN_E_INVAL;
    }
    return 0;
}

static void sync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

static bool exists(const char *dir, const char *name)
{
    char p[4200], e[64];
    return path_of(dir, name, p, sizeof(p), e, sizeof(e)) == 0 && access(p, F_OK) == 0;
}

static int remove_file(const char *dir, const char *name, char *err, size_t err_len)
{
    char p[4200];
    int r = path_of(dir, name, p, sizeof(p), err, err_len);
    if (r < 0)
        return r;
    if (unlink(p) < 0 && errno != ENOENT) {
        snprintf(err, err_len, "cannot remove %s in the state directory %s: %s", name, dir, strerror(errno));
        return M2MVPN_E_IO;
    }
    sync_dir(dir);
    return 0;
}

static int move_file(const char *dir, const char *from, const char *to, char *err, size_t err_len)
{
    char a[4200], b[4200];
    int r = path_of(dir, from, a, sizeof(a), err, err_len);
    if (r == 0)
        r = path_of(dir, to, b, sizeof(b), err, err_len);
    if (r < 0)
        return r;
    if (rename(a, b) < 0) {
        snprintf(err, err_len, "cannot rename %s to %s in the state directory %s: %s", from, to, dir,
                 strerror(errno));
        return M2MVPN_E_IO;
    }
    sync_dir(dir);
    return 0;
}

/* Whole file into memory (bounded); NULL with errno set. */
static char *slurp(const char *dir, const char *name, size_t *len)
{
    char p[4200], e[64];
    if (path_of(dir, name, p, sizeof(p), e, sizeof(e)) < 0)
        return NULL;
    FILE *f = fopen(p, "rb");
    if (!f)
        return NULL;
    setvbuf(f, NULL, _IONBF, 0); /* no stdio copy of a profile left unwiped */
    char *buf = malloc(MGMT_BUNDLE_MAX + 1);
    size_t n = buf ? fread(buf, 1, MGMT_BUNDLE_MAX, f) : 0;
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = 0;
    *len = n;
    return buf;
}

/* ------------------------------------------------------------ journal */

int mgmt_journal_load(const char *dir, mgmt_journal *j, char *err, size_t err_len)
{
    memset(j, 0, sizeof(*j));
    size_t len = 0;
    char *text = slurp(dir, JOURNAL, &len);
    if (!text) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, err_len, "cannot read %s in the state directory %s: %s", JOURNAL, dir, strerror(errno));
        return M2MVPN_E_IO;
    }
    json_object *o = json_tokener_parse(text);
    secure_free(text, len + 1);
    json_object *v;
    int r = 0;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, "phase", &v)) {
        snprintf(err, err_len, "%s in the state directory %s is not a journal (no \"phase\")", JOURNAL, dir);
        r = M2MVPN_E_IO;
        goto out;
    }
    const char *s = json_object_get_string(v);
    j->phase = MGMT_APPLY_NONE;
    bool known = false;
    for (size_t i = 0; i < sizeof(apply_names) / sizeof(apply_names[0]); i++)
        if (s && !strcmp(s, apply_names[i])) {
            j->phase = (mgmt_apply_phase)i;
            known = true;
        }
    if (!known) {
        snprintf(err, err_len, "%s in the state directory %s: unknown phase \"%.40s\"", JOURNAL, dir, s ? s : "");
        r = M2MVPN_E_IO;
        goto out;
    }
    if (json_object_object_get_ex(o, "deployment", &v))
        j->deployment = json_object_get_int64(v);
    if (json_object_object_get_ex(o, "from", &v))
        j->from = json_object_get_int64(v);
    if (json_object_object_get_ex(o, "to", &v))
        j->to = json_object_get_int64(v);
    if (json_object_object_get_ex(o, "had_prev", &v))
        j->had_prev = json_object_get_boolean(v);
    if (json_object_object_get_ex(o, "reason", &v))
        snprintf(j->reason, sizeof(j->reason), "%s", json_object_get_string(v));
out:
    json_object_put(o);
    return r;
}

int mgmt_journal_save(const char *dir, const mgmt_journal *j, char *err, size_t err_len)
{
    if (j->phase == MGMT_APPLY_NONE)
        return remove_file(dir, JOURNAL, err, err_len);
    json_object *o = json_object_new_object();
    if (!o)
        return M2MVPN_E_NOMEM;
    json_object_object_add(o, "phase", json_object_new_string(mgmt_apply_phase_name(j->phase)));
    json_object_object_add(o, "deployment", json_object_new_int64(j->deployment));
    json_object_object_add(o, "from", json_object_new_int64(j->from));
    json_object_object_add(o, "to", json_object_new_int64(j->to));
    json_object_object_add(o, "had_prev", json_object_new_boolean(j->had_prev));
    json_object_object_add(o, "reason", json_object_new_string(j->reason));
    return mgmt_write_json(dir, JOURNAL, o, err, err_len);
}

static int set_phase(const char *dir, mgmt_journal *j, mgmt_apply_phase p, char *err, size_t err_len)
{
    mgmt_apply_phase old = j->phase;
    j->phase = p;
    int r = mgmt_journal_save(dir, j, err, err_len);
    if (r < 0)
        j->phase = old;
    return r;
}

/* -------------------------------------------------------------- steps */

int mgmt_version_check(int64_t installed, int64_t offered, int64_t not_after, int64_t now, char *err,
                       size_t err_len)
{
    if (offered <= installed) {
        snprintf(err, err_len, "bundle refused: version %lld is not newer than the installed version %lld "
                 "(downgrade or replay)", (long long)offered, (long long)installed);
        return M2MVPN_E_BUNDLE;
    }
    if (not_after <= now) {
        snprintf(err, err_len, "bundle refused: it expired at %lld (now %lld)", (long long)not_after,
                 (long long)now);
        return M2MVPN_E_BUNDLE;
    }
    return 0;
}

int mgmt_apply_stage(const char *dir, mgmt_journal *j, int64_t deployment, int64_t from, int64_t to,
                     const char *text, size_t len, char *err, size_t err_len)
{
    memset(j, 0, sizeof(*j));
    j->deployment = deployment;
    j->from = from;
    j->to = to;
    j->had_prev = exists(dir, PROFILE);
    /* The journal first: a kill from here on is undone at the next start. */
    int r = set_phase(dir, j, MGMT_APPLY_STAGED, err, err_len);
    if (r == 0)
        r = mgmt_write_file(dir, NEXT, text, len, err, err_len);
    if (r == 0 && j->had_prev) {
        size_t n = 0;
        char *old = slurp(dir, PROFILE, &n);
        if (!old) {
            snprintf(err, err_len, "cannot read the installed %s in %s: %s", PROFILE, dir, strerror(errno));
            r = M2MVPN_E_IO;
        } else {
            r = mgmt_write_file(dir, PREV, old, n, err, err_len);
            secure_free(old, n + 1); /* the profile, with the key's PIN */
        }
    }
    if (r < 0) {
        char e2[256];
        remove_file(dir, NEXT, e2, sizeof(e2));
        j->phase = MGMT_APPLY_NONE;
        mgmt_journal_save(dir, j, e2, sizeof(e2));
    }
    return r;
}

int mgmt_apply_write(const char *dir, mgmt_journal *j, char *err, size_t err_len)
{
    int r = move_file(dir, NEXT, PROFILE, err, err_len);
    if (r == 0)
        r = set_phase(dir, j, MGMT_APPLY_WRITTEN, err, err_len);
    return r;
}

int mgmt_apply_trying(const char *dir, mgmt_journal *j, char *err, size_t err_len)
{
    return set_phase(dir, j, MGMT_APPLY_TRYING, err, err_len);
}

int mgmt_apply_commit(const char *dir, mgmt_journal *j, mgmt_state *st, char *err, size_t err_len)
{
    int r = set_phase(dir, j, MGMT_APPLY_COMMITTED, err, err_len);
    if (r < 0)
        return r;
    int64_t old = st->profile_version;
    st->profile_version = j->to;
    r = mgmt_state_save(dir, st, err, err_len);
    if (r < 0) {
        st->profile_version = old;
        return r;
    }
    return remove_file(dir, PREV, err, err_len);
}

int mgmt_apply_rollback(const char *dir, mgmt_journal *j, const char *reason, char *err, size_t err_len)
{
    int r = 0;
    if (j->phase >= MGMT_APPLY_STAGED && j->phase <= MGMT_APPLY_TRYING) {
        if (j->had_prev && exists(dir, PREV))
            r = move_file(dir, PREV, PROFILE, err, err_len);
        else if (!j->had_prev)
            r = remove_file(dir, PROFILE, err, err_len);
        /* had_prev without PREV: killed before the copy was whole, and
         * then profile.json was not touched yet (NEXT moves after it). */
        if (r == 0)
            r = remove_file(dir, NEXT, err, err_len);
    }
    if (r < 0)
        return r;
    snprintf(j->reason, sizeof(j->reason), "%s", reason ? reason : "");
    return set_phase(dir, j, MGMT_APPLY_FAILED, err, err_len);
}

int mgmt_apply_recover(const char *dir, mgmt_journal *j, mgmt_state *st, char *what, size_t what_len, char *err,
                       size_t err_len)
{
    int r = mgmt_journal_load(dir, j, err, err_len);
    if (r < 0)
        return r;
    if (what_len)
        what[0] = 0;
    switch (j->phase) {
    case MGMT_APPLY_NONE:
    case MGMT_APPLY_FAILED:
        return 0; /* FAILED: only the feedback is still owed */
    case MGMT_APPLY_STAGED:
    case MGMT_APPLY_WRITTEN:
    case MGMT_APPLY_TRYING: {
        char reason[200];
        snprintf(reason, sizeof(reason), "interrupted while %s (engine restart); previous profile version %lld "
                 "restored", mgmt_apply_phase_name(j->phase), (long long)j->from);
        r = mgmt_apply_rollback(dir, j, reason, err, err_len);
        if (r == 0)
            snprintf(what, what_len, "%s", reason);
        return r;
    }
    case MGMT_APPLY_COMMITTED:
        /* Killed between the journal and the version: finish the commit. */
        if (st->profile_version != j->to) {
            st->profile_version = j->to;
            r = mgmt_state_save(dir, st, err, err_len);
        }
        if (r == 0)
            r = remove_file(dir, PREV, err, err_len);
        if (r == 0)
            snprintf(what, what_len, "commit of profile version %lld completed", (long long)j->to);
        return r;
    }
    return 0;
}
