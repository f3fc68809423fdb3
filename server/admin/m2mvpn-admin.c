/* SPDX-License-Identifier: Apache-2.0 */
/* m2mvpn-admin: the operator's command line over m2mvpn-mgmtd's HTTPS API.
 *   m2mvpn-admin [--server URL] [--ca PEM] [--config FILE] [--json] COMMAND ...
 * The admin token comes from M2MVPN_ADMIN_TOKEN or the config file
 * ({"server": URL, "ca": PEM, "token": "..."}). Exit 0, or 1 with one line. */
#include <curl/curl.h>
#include <errno.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    char *data;
    size_t len;
} buf;

static const char *server, *ca;
static char *token;
static int json_out;
static const char *upload;    /* set: the next call() sends these bytes as an octet-stream body */
static size_t upload_size;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("m2mvpn-admin: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static size_t on_data(char *p, size_t sz, size_t n, void *arg)
{
    buf *b = arg;
    size_t k = sz * n;
    if (b->len + k > 16 * 1024 * 1024)
        return 0;
    char *d = realloc(b->data, b->len + k + 1);
    if (!d)
        return 0;
    memcpy(d + b->len, p, k);
    b->data = d;
    b->len += k;
    d[b->len] = 0;
    return k;
}

static char *read_file(const char *path, const char *what)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("%s %s: %s", what, path, strerror(errno));
    buf b = {0};
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        if (on_data(tmp, 1, n, &b) != n)
            die("%s %s: too large", what, path);
    fclose(f);
    if (!b.data)
        b.data = strdup("");
    return b.data;
}

/* One API call; returns the HTTP status, the body in *out (NUL-terminated). */
static long call(const char *method, const char *path, const char *body, buf *out)
{
    CURL *c = curl_easy_init();
    if (!c)
        die("cannot initialise libcurl");
    char url[1024], auth[1024], err[CURL_ERROR_SIZE] = "";
    snprintf(url, sizeof(url), "%s%s", server, path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    h = curl_slist_append(h, upload ? "Content-Type: application/octet-stream" : "Content-Type: application/json");
    if (upload)
        h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (upload) {   /* one chunk of an artifact */
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)upload_size);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, upload);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 600L);
    } else if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    else if (!strcmp(method, "POST"))
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    if (!upload)
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    memset(auth, 0, sizeof(auth));
    if (rc != CURLE_OK) {
        curl_easy_cleanup(c);
        free(out->data);
        die("%s: %s", server, err[0] ? err : curl_easy_strerror(rc));
    }
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    if (!out->data)
        out->data = strdup("");
    return code;
}

/* Calls, fails with the server's error sentence, returns the JSON answer. */
static json_object *api(const char *method, const char *path, const char *body)
{
    buf b = {0};
    long code = call(method, path, body, &b);
    json_object *o = json_tokener_parse(b.data);
    free(b.data);
    if (code < 200 || code > 299) {
        json_object *e;
        char msg[512] = "";
        if (o && json_object_object_get_ex(o, "error", &e))
            snprintf(msg, sizeof(msg), "%s", json_object_get_string(e));
        json_object_put(o);
        if (msg[0])
            die("%s (HTTP %ld)", msg, code);
        die("the server answered HTTP %ld", code);
    }
    if (!o)
        die("the server's answer is not JSON");
    return o;
}

/* The file in chunks of at most the server's chunk size (PUT artifacts/ID?offset=N), then
   finish with its size and sha256; the server checks both. The answer of finish. */
static const char *sget(json_object *o, const char *k);
static json_object *upload_artifact(const char *file)
{
    FILE *f = fopen(file, "rb");
    if (!f)
        die("--file %s: %s", file, strerror(errno));
    json_object *st = api("POST", "/api/v1/admin/artifacts", NULL), *v;
    char id[64], path[256];
    snprintf(id, sizeof(id), "%s", sget(st, "upload"));
    long long chunk = json_object_object_get_ex(st, "chunk_max", &v) ? json_object_get_int64(v) : 0;
    json_object_put(st);
    if (chunk <= 0 || chunk > (64LL << 20))
        chunk = 1 << 20;
    char *b = malloc((size_t)chunk);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!b || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        die("out of memory");
    long long off = 0;
    size_t n;
    while ((n = fread(b, 1, (size_t)chunk, f)) > 0) {
        if (EVP_DigestUpdate(md, b, n) != 1)
            die("sha256 of %s failed", file);
        snprintf(path, sizeof(path), "/api/v1/admin/artifacts/%s?offset=%lld", id, off);
        upload = b, upload_size = n;
        json_object_put(api("PUT", path, NULL));
        upload = NULL;
        off += (long long)n;
    }
    if (ferror(f))
        die("--file %s: %s", file, strerror(errno));
    fclose(f);
    free(b);
    if (off == 0)
        die("--file %s: empty", file);
    unsigned char h[32];
    unsigned int hl = 0;
    char hex[65];
    if (EVP_DigestFinal_ex(md, h, &hl) != 1)
        die("sha256 of %s failed", file);
    EVP_MD_CTX_free(md);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", h[i]);
    json_object *fin = json_object_new_object();
    json_object_object_add(fin, "sha256", json_object_new_string(hex));
    json_object_object_add(fin, "size", json_object_new_int64(off));
    snprintf(path, sizeof(path), "/api/v1/admin/artifacts/%s/finish", id);
    json_object *o = api("POST", path, json_object_to_json_string(fin));
    json_object_put(fin);
    return o;
}

static void print_json(json_object *o)
{
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
}

static const char *sget(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) && v ? json_object_get_string(v) : "-";
}

static long long parse_duration(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    long long mul = 0;
    if (end != s && end[0] && !end[1])
        mul = end[0] == 's' ? 1 : end[0] == 'm' ? 60 : end[0] == 'h' ? 3600 : end[0] == 'd' ? 86400
            : end[0] == 'w' ? 604800 : 0;
    if (errno || v <= 0 || !mul || v > 366LL * 86400 / mul)
        die("--expires %s: expected a duration such as 30m, 12h or 7d (at most 366d)", s);
    return v * mul;
}

static const char *opt(int argc, char **argv, const char *name, int *seen);

/* --percent, --max-failures (and --window for updates) as the publish body */
static json_object *rollout_opts(int argc, char **argv, int *seen, int window)
{
    json_object *req = json_object_new_object();
    const char *p = opt(argc, argv, "--percent", seen), *f = opt(argc, argv, "--max-failures", seen);
    const char *w = window ? opt(argc, argv, "--window", seen) : NULL;
    char *end;
    if (p) {
        long v = strtol(p, &end, 10);
        if (*end || end == p || v < 1 || v > 100)
            die("--percent %s: expected 1 to 100", p);
        json_object_object_add(req, "percent", json_object_new_int((int)v));
    }
    if (f) {
        double v = strtod(f, &end);
        if (*end || end == f || !(v >= 0 && v <= 1))
            die("--max-failures %s: expected a share 0 to 1, e.g. 0.2", f);
        json_object_object_add(req, "max_failures", json_object_new_double(v));
    }
    if (w) {
        int h1, m1, h2, m2, n = 0;
        if (strlen(w) != 11 || sscanf(w, "%2d:%2d-%2d:%2d%n", &h1, &m1, &h2, &m2, &n) != 4 || w[n])
            die("--window %s: expected HH:MM-HH:MM (UTC)", w);
        json_object_object_add(req, "window", json_object_new_string(w));
    }
    return req;
}

static void usage(FILE *f)
{
    fputs("usage: m2mvpn-admin [--server URL] [--ca PEM] [--config FILE] [--json] COMMAND\n"
          "  token create --group G [--count N] [--expires DURATION] [--auto-approve]\n"
          "  device approve|reject|revoke ID\n"
          "  group create G --template FILE\n"
          "  device list                      (with the state each device reports, overdue)\n"
          "  profile publish --group G [--percent P] [--max-failures F]\n"
          "  update publish --group G --file F --version V [--percent P] [--max-failures F]\n"
          "                 [--window HH:MM-HH:MM]   (UTC maintenance window)\n"
          "  cert renew --group G [--percent P] [--max-failures F]   (devices renew now)\n"
          "  deployment list\n"
          "  ca show\n"
          "The admin token: environment M2MVPN_ADMIN_TOKEN, or \"token\" in --config FILE.\n", f);
}

static const char *opt(int argc, char **argv, const char *name, int *seen)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], name)) {
            if (i + 1 >= argc)
                die("%s needs a value", name);
            seen[i] = seen[i + 1] = 1;
            return argv[i + 1];
        }
    return NULL;
}

static int flag(int argc, char **argv, const char *name, int *seen)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], name)) {
            seen[i] = 1;
            return 1;
        }
    return 0;
}

static void no_extra(int argc, char **argv, const int *seen)
{
    for (int i = 0; i < argc; i++)
        if (!seen[i])
            die("unexpected argument \"%s\" (see --help)", argv[i]);
}

int main(int argc, char **argv)
{
    int seen[256] = {0};
    if (argc > 256)
        die("too many arguments");
    argc--, argv++;
    if (flag(argc, argv, "--help", seen) || flag(argc, argv, "-h", seen)) {
        usage(stdout);
        return 0;
    }
    const char *config = opt(argc, argv, "--config", seen);
    server = opt(argc, argv, "--server", seen);
    ca = opt(argc, argv, "--ca", seen);
    json_out = flag(argc, argv, "--json", seen);
    const char *env = getenv("M2MVPN_ADMIN_TOKEN");
    if (env && *env)
        token = strdup(env);
    if (config) {
        char *text = read_file(config, "--config");
        json_object *c = json_tokener_parse(text), *v;
        free(text);
        if (!c || !json_object_is_type(c, json_type_object))
            die("--config %s: not a JSON object", config);
        json_object_object_foreach(c, k, v0) {
            (void)v0;
            if (strcmp(k, "server") && strcmp(k, "ca") && strcmp(k, "token"))
                die("--config %s: unknown key \"%s\" (server, ca, token)", config, k);
        }
        if (!server && json_object_object_get_ex(c, "server", &v))
            server = strdup(json_object_get_string(v));
        if (!ca && json_object_object_get_ex(c, "ca", &v))
            ca = strdup(json_object_get_string(v));
        if (!token && json_object_object_get_ex(c, "token", &v))
            token = strdup(json_object_get_string(v));
        json_object_put(c);
    }
    /* the command: the arguments not taken by an option */
    char *cmd[8];
    int nc = 0, seen2[256];
    memcpy(seen2, seen, sizeof(seen2));
    for (int i = 0; i < argc; i++)
        if (i > 0 && (!strcmp(argv[i - 1], "--group") || !strcmp(argv[i - 1], "--count") ||
                      !strcmp(argv[i - 1], "--expires") || !strcmp(argv[i - 1], "--template") ||
                      !strcmp(argv[i - 1], "--percent") || !strcmp(argv[i - 1], "--max-failures") ||
                      !strcmp(argv[i - 1], "--file") || !strcmp(argv[i - 1], "--version") ||
                      !strcmp(argv[i - 1], "--window")))
            continue;
        else if (!seen[i] && argv[i][0] != '-') {
            if (nc == 8)
                die("too many arguments");
            cmd[nc++] = argv[i];
            seen2[i] = 1;
        }
    if (nc < 2) {
        usage(stderr);
        return 1;
    }
    if (!server)
        die("no server: --server URL (or \"server\" in --config)");
    if (strncmp(server, "https://", 8))
        die("--server %s: an https:// URL expected", server);
    if (!token || !*token)
        die("no admin token: set M2MVPN_ADMIN_TOKEN or \"token\" in --config");
    curl_global_init(CURL_GLOBAL_DEFAULT);

    json_object *o = NULL;
    char path[512];
    if (!strcmp(cmd[0], "token") && !strcmp(cmd[1], "create") && nc == 2) {
        const char *g = opt(argc, argv, "--group", seen2), *cnt = opt(argc, argv, "--count", seen2);
        const char *exp = opt(argc, argv, "--expires", seen2);
        int aa = flag(argc, argv, "--auto-approve", seen2);
        no_extra(argc, argv, seen2);
        if (!g)
            die("token create needs --group G");
        json_object *req = json_object_new_object();
        json_object_object_add(req, "group", json_object_new_string(g));
        if (cnt) {
            char *end;
            long n = strtol(cnt, &end, 10);
            if (*end || n < 1 || n > 1000)
                die("--count %s: expected 1 to 1000", cnt);
            json_object_object_add(req, "count", json_object_new_int64(n));
        }
        if (exp)
            json_object_object_add(req, "expires_s", json_object_new_int64(parse_duration(exp)));
        json_object_object_add(req, "auto_approve", json_object_new_boolean(aa));
        o = api("POST", "/api/v1/admin/tokens", json_object_to_json_string(req));
        json_object_put(req);
        if (!json_out) {
            json_object *arr;
            json_object_object_get_ex(o, "tokens", &arr);
            for (size_t i = 0; arr && i < json_object_array_length(arr); i++)
                puts(sget(json_object_array_get_idx(arr, i), "token"));
        }
    } else if (!strcmp(cmd[0], "device") && !strcmp(cmd[1], "list") && nc == 2) {
        no_extra(argc, argv, seen2);
        o = api("GET", "/api/v1/admin/devices", NULL);
        if (!json_out) {
            json_object *arr;
            json_object_object_get_ex(o, "devices", &arr);
            printf("%-21s %-12s %-9s %-10s %-7s %-10s %-20s %s\n", "DEVICE", "GROUP", "STATE", "TUNNEL", "PROFILE",
                   "SOFTWARE", "LAST CONTACT", "");
            for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
                json_object *d = json_object_array_get_idx(arr, i), *od;
                char when[32] = "never";
                long long lc = strtoll(sget(d, "last_contact"), NULL, 10);
                time_t t = (time_t)lc;
                struct tm tm;
                if (lc > 0 && gmtime_r(&t, &tm))
                    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%SZ", &tm);
                int overdue = json_object_object_get_ex(d, "overdue", &od) && json_object_get_boolean(od);
                printf("%-21s %-12s %-9s %-10s %-7s %-10s %-20s %s\n", sget(d, "id"), sget(d, "group"),
                       sget(d, "state"), sget(d, "tunnel"), sget(d, "profile_version"), sget(d, "software_version"),
                       when, overdue ? "OVERDUE" : "");
            }
        }
    } else if (!strcmp(cmd[0], "device") && nc == 3 &&
               (!strcmp(cmd[1], "approve") || !strcmp(cmd[1], "reject") || !strcmp(cmd[1], "revoke"))) {
        no_extra(argc, argv, seen2);
        char *esc = curl_easy_escape(NULL, cmd[2], 0);
        snprintf(path, sizeof(path), "/api/v1/admin/devices/%s/%s", esc, cmd[1]);
        curl_free(esc);
        o = api("POST", path, NULL);
        if (!json_out)
            printf("%s: %s\n", sget(o, "id"), sget(o, "state"));
    } else if (!strcmp(cmd[0], "group") && !strcmp(cmd[1], "create") && nc == 3) {
        const char *tf = opt(argc, argv, "--template", seen2);
        no_extra(argc, argv, seen2);
        if (!tf)
            die("group create needs --template FILE");
        char *tpl = read_file(tf, "--template");
        json_object *t = json_tokener_parse(tpl);
        if (!t || !json_object_is_type(t, json_type_object))
            die("--template %s: not a JSON object", tf);
        json_object_put(t);
        char *esc = curl_easy_escape(NULL, cmd[2], 0);
        snprintf(path, sizeof(path), "/api/v1/admin/groups/%s", esc);
        curl_free(esc);
        o = api("PUT", path, tpl);
        free(tpl);
        if (!json_out)
            printf("group %s: template stored (publish it with: profile publish --group %s)\n", cmd[2], cmd[2]);
    } else if (!strcmp(cmd[0], "profile") && !strcmp(cmd[1], "publish") && nc == 2) {
        const char *g = opt(argc, argv, "--group", seen2);
        json_object *req = rollout_opts(argc, argv, seen2, 0);
        no_extra(argc, argv, seen2);
        if (!g)
            die("profile publish needs --group G");
        char *esc = curl_easy_escape(NULL, g, 0);
        snprintf(path, sizeof(path), "/api/v1/admin/groups/%s/publish", esc);
        curl_free(esc);
        o = api("POST", path, json_object_to_json_string(req));
        json_object_put(req);
        if (!json_out)
            printf("group %s: profile version %s published, deployment %s (%s devices, first wave %s)\n",
                   sget(o, "group"), sget(o, "version"), sget(o, "id"), sget(o, "devices"), sget(o, "first_wave"));
    } else if (!strcmp(cmd[0], "update") && !strcmp(cmd[1], "publish") && nc == 2) {
        const char *g = opt(argc, argv, "--group", seen2), *file = opt(argc, argv, "--file", seen2);
        const char *ver = opt(argc, argv, "--version", seen2);
        json_object *req = rollout_opts(argc, argv, seen2, 1);
        no_extra(argc, argv, seen2);
        if (!g || !file || !ver)
            die("update publish needs --group G --file F --version V");
        if (!*ver || strlen(ver) > 63 || strpbrk(ver, " \t\r\n"))
            die("--version %s: 1 to 63 characters without spaces", ver);
        json_object *art = upload_artifact(file);
        json_object_object_add(req, "group", json_object_new_string(g));
        json_object_object_add(req, "type", json_object_new_string("software"));
        json_object_object_add(req, "software_version", json_object_new_string(ver));
        json_object_object_add(req, "artifact", json_object_new_string(sget(art, "sha256")));
        json_object_put(art);
        o = api("POST", "/api/v1/admin/deployments", json_object_to_json_string(req));
        json_object_put(req);
        if (!json_out)
            printf("group %s: software %s published (sha256 %s, %s bytes), deployment %s (%s devices, first wave %s)\n",
                   sget(o, "group"), sget(o, "software_version"), sget(o, "artifact"), sget(o, "size"), sget(o, "id"),
                   sget(o, "devices"), sget(o, "first_wave"));
    } else if (!strcmp(cmd[0], "cert") && !strcmp(cmd[1], "renew") && nc == 2) {
        const char *g = opt(argc, argv, "--group", seen2);
        json_object *req = rollout_opts(argc, argv, seen2, 0);
        no_extra(argc, argv, seen2);
        if (!g)
            die("cert renew needs --group G");
        json_object_object_add(req, "group", json_object_new_string(g));
        json_object_object_add(req, "type", json_object_new_string("cert"));
        o = api("POST", "/api/v1/admin/deployments", json_object_to_json_string(req));
        json_object_put(req);
        if (!json_out)
            printf("group %s: certificate renewal requested, deployment %s (%s devices, first wave %s)\n",
                   sget(o, "group"), sget(o, "id"), sget(o, "devices"), sget(o, "first_wave"));
    } else if (!strcmp(cmd[0], "deployment") && !strcmp(cmd[1], "list") && nc == 2) {
        no_extra(argc, argv, seen2);
        o = api("GET", "/api/v1/admin/deployments", NULL);
        if (!json_out) {
            json_object *arr;
            json_object_object_get_ex(o, "deployments", &arr);
            printf("%-5s %-12s %-8s %-8s %-7s %-5s %-11s %-7s %-7s %-7s %s\n", "ID", "GROUP", "TYPE", "VERSION", "STATE",
                   "WAVE", "WINDOW", "DEVICES", "SUCCESS", "FAILURE", "PENDING");
            for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
                json_object *d = json_object_array_get_idx(arr, i);
                const char *sv = sget(d, "software_version");
                printf("%-5s %-12s %-8s %-8s %-7s %-5s %-11s %-7s %-7s %-7s %s\n", sget(d, "id"), sget(d, "group"),
                       sget(d, "type"), strcmp(sv, "-") ? sv : sget(d, "version"), sget(d, "state"), sget(d, "wave"),
                       sget(d, "window"), sget(d, "devices"), sget(d, "success"), sget(d, "failure"),
                       sget(d, "pending"));
            }
        }
    } else if (!strcmp(cmd[0], "ca") && !strcmp(cmd[1], "show") && nc == 2) {
        no_extra(argc, argv, seen2);
        buf b = {0};
        long code = call("GET", "/api/v1/admin/ca", NULL, &b);
        if (code != 200) {
            json_object *e = json_tokener_parse(b.data), *m;
            char msg[512] = "";
            if (e && json_object_object_get_ex(e, "error", &m))
                snprintf(msg, sizeof(msg), "%s", json_object_get_string(m));
            json_object_put(e);
            free(b.data);
            if (msg[0])
                die("%s (HTTP %ld)", msg, code);
            die("the server answered HTTP %ld", code);
        }
        if (json_out) {
            o = json_object_new_object();
            json_object_object_add(o, "ca", json_object_new_string(b.data));
        } else {
            fputs(b.data, stdout);
        }
        free(b.data);
    } else {
        usage(stderr);
        return 1;
    }
    if (json_out && o)
        print_json(o);
    json_object_put(o);
    free(token);
    curl_global_cleanup();
    return 0;
}
