/* SPDX-License-Identifier: Apache-2.0 */
/* The load generator of bench/mgmt-poll: simulated devices polling
 * m2mvpn-mgmtd (GET /api/v1/device/poll, mutual TLS with each device's own
 * certificate) over libcurl multi, C transfers in flight, for a fixed time.
 *
 *   mgmt_pollgen --url https://127.0.0.1:PORT --cacert TLS_CA --devices LIST
 *                --concurrency C --seconds S --mode new|keepalive [--share200 F]
 *                [--etags FILE] [--once | --warmup]
 *
 * Devices take turns round-robin. mode new: every poll on a new TCP
 * connection with a full TLS handshake (no session resumption), as a device
 * polling every few minutes does; mode keepalive: each device keeps its own
 * connection (and certificate) between its polls. A device sends the ETag of
 * its last 200 in If-None-Match (steady state: 304), except a share F of polls
 * (default 0.1) that send none (answer 200 with the body). --etags FILE: the
 * devices' last ETags, read at the start if it exists and written at the end
 * (a device keeps its state between runs). --once: every device polls once,
 * then stop (no time limit). --warmup: every device polls once before the
 * measured time, not counted (keepalive: every connection is open when the
 * clock starts). Prints one line
 *   RESULT polls=P seconds=T p50_ms=.. p99_ms=.. ok200=.. nm304=.. errors=.. connects=..
 * and the first errors on stderr. Exit 1 if any poll failed. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct {
    char *pem;          /* certificate and key */
    char etag[64];
    int ok;             /* answered at least once */
} device;

typedef struct {
    CURL *h;
    struct curl_slist *hdr;
    int dev;
    char etag[64];      /* from the answer being received */
    long long started_us;
} slot;

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static size_t on_header(char *b, size_t size, size_t n, void *arg)
{
    slot *s = arg;
    size_t len = size * n;
    if (len > 6 && !strncasecmp(b, "ETag:", 5)) {
        size_t i = 5;
        while (i < len && b[i] == ' ')
            i++;
        size_t j = len;
        while (j > i && (b[j - 1] == '\r' || b[j - 1] == '\n' || b[j - 1] == ' '))
            j--;
        if (j - i < sizeof(s->etag)) {
            memcpy(s->etag, b + i, j - i);
            s->etag[j - i] = 0;
        }
    }
    return len;
}

static size_t on_body(char *b, size_t size, size_t n, void *arg)
{
    (void)b, (void)arg;
    return size * n;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static void usage(void)
{
    fprintf(stderr, "usage: mgmt_pollgen --url URL --cacert PEM --devices LIST --concurrency C --seconds S "
                    "--mode new|keepalive [--share200 F] [--etags FILE] [--once | --warmup]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *url = NULL, *cacert = NULL, *list = NULL, *mode = "new", *etags = NULL;
    int conc = 100, once = 0, warmup = 0;
    double secs = 20, share200 = 0.1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--once") || !strcmp(argv[i], "--warmup")) {
            *(argv[i][2] == 'o' ? &once : &warmup) = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        if (!strcmp(argv[i], "--url"))
            url = argv[++i];
        else if (!strcmp(argv[i], "--cacert"))
            cacert = argv[++i];
        else if (!strcmp(argv[i], "--devices"))
            list = argv[++i];
        else if (!strcmp(argv[i], "--concurrency"))
            conc = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds"))
            secs = atof(argv[++i]);
        else if (!strcmp(argv[i], "--mode"))
            mode = argv[++i];
        else if (!strcmp(argv[i], "--etags"))
            etags = argv[++i];
        else if (!strcmp(argv[i], "--share200"))
            share200 = atof(argv[++i]);
        else
            usage();
    }
    int keep = !strcmp(mode, "keepalive");
    if (!url || !cacert || !list || conc < 1 || secs <= 0 || share200 < 0 || share200 > 1 ||
        (!keep && strcmp(mode, "new")))
        usage();

    /* the devices */
    FILE *f = fopen(list, "r");
    if (!f) {
        perror(list);
        return 2;
    }
    size_t ndev = 0, cap = 0;
    device *devs = NULL;
    char line[4200];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line)
            continue;
        if (ndev == cap) {
            cap = cap ? 2 * cap : 1024;
            devs = realloc(devs, cap * sizeof(*devs));
            if (!devs)
                return 2;
        }
        devs[ndev].pem = strdup(line);
        devs[ndev].etag[0] = 0;
        devs[ndev].ok = 0;
        ndev++;
    }
    fclose(f);
    if (ndev == 0) {
        fprintf(stderr, "mgmt_pollgen: %s lists no device\n", list);
        return 2;
    }
    if ((size_t)conc > ndev)
        conc = (int)ndev;
    if (etags && (f = fopen(etags, "r"))) {
        for (size_t i = 0; i < ndev && fgets(line, sizeof(line), f); i++) {
            line[strcspn(line, "\r\n")] = 0;
            snprintf(devs[i].etag, sizeof(devs[i].etag), "%s", line);
        }
        fclose(f);
    }

    char target[512];
    snprintf(target, sizeof(target), "%s/api/v1/device/poll?tunnel=up&profile=1&software=1.0.0", url);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *m = curl_multi_init();
    /* keepalive: room for every device's idle connection */
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, keep ? (long)(ndev + (size_t)conc) : (long)conc);
    slot *slots = calloc((size_t)conc, sizeof(*slots));
    size_t cap_lat = 1 << 16, nlat = 0;
    long long *lat = malloc(cap_lat * sizeof(*lat));
    if (!slots || !lat)
        return 2;
    unsigned long long ok200 = 0, nm304 = 0, errors = 0, connects = 0, next = 0;
    unsigned int rnd = 12345;

    long long t0 = 0, end = 0;
    int once_now = once;
    /* start one poll on slot s for the next device */
    #define START(s)                                                                                   \
        do {                                                                                           \
            slot *s_ = (s);                                                                            \
            s_->dev = (int)(next++ % ndev);                                                            \
            device *d_ = &devs[s_->dev];                                                               \
            curl_slist_free_all(s_->hdr);                                                              \
            s_->hdr = NULL;                                                                            \
            rnd = rnd * 1103515245u + 12345u;                                                          \
            if (d_->etag[0] && (double)((rnd >> 8) & 0xffff) / 65536.0 >= share200) {                  \
                char h_[96];                                                                           \
                snprintf(h_, sizeof(h_), "If-None-Match: %s", d_->etag);                               \
                s_->hdr = curl_slist_append(NULL, h_);                                                 \
            }                                                                                          \
            s_->etag[0] = 0;                                                                           \
            curl_easy_setopt(s_->h, CURLOPT_HTTPHEADER, s_->hdr);                                      \
            curl_easy_setopt(s_->h, CURLOPT_SSLCERT, d_->pem);                                         \
            curl_easy_setopt(s_->h, CURLOPT_SSLKEY, d_->pem);                                          \
            s_->started_us = now_us();                                                                 \
            curl_multi_add_handle(m, s_->h);                                                           \
        } while (0)

    for (int i = 0; i < conc; i++) {
        slot *s = &slots[i];
        s->h = curl_easy_init();
        curl_easy_setopt(s->h, CURLOPT_URL, target);
        curl_easy_setopt(s->h, CURLOPT_CAINFO, cacert);
        curl_easy_setopt(s->h, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(s->h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(s->h, CURLOPT_HEADERDATA, s);
        curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(s->h, CURLOPT_PRIVATE, s);
        curl_easy_setopt(s->h, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(s->h, CURLOPT_NOSIGNAL, 1L);
        if (!keep) {
            curl_easy_setopt(s->h, CURLOPT_FRESH_CONNECT, 1L);
            curl_easy_setopt(s->h, CURLOPT_FORBID_REUSE, 1L);
            curl_easy_setopt(s->h, CURLOPT_SSL_SESSIONID_CACHE, 0L);
        }
    }

    int shown = 0;
    long long measured_end = 0;
    /* phase 0 (--warmup): every device polls once, not measured (keepalive: its
       connection is then open); phase 1: measured */
    for (int phase = warmup ? 0 : 1; phase < 2; phase++) {
        once_now = once || phase == 0;
        ok200 = nm304 = connects = next = 0;
        nlat = 0;
        t0 = now_us();
        end = once_now ? -1 : t0 + (long long)(secs * 1e6);
        for (int i = 0; i < conc; i++)
            START(&slots[i]);
        int running = conc;
        while (running > 0) {
            curl_multi_perform(m, &running);
            CURLMsg *msg;
            int left;
            while ((msg = curl_multi_info_read(m, &left))) {
                if (msg->msg != CURLMSG_DONE)
                    continue;
                slot *s;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
                long long t = now_us();
                long code = 0, nc = 0;
                curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &code);
                curl_easy_getinfo(s->h, CURLINFO_NUM_CONNECTS, &nc);
                CURLcode res = msg->data.result;
                curl_multi_remove_handle(m, s->h);
                if (once_now || t <= end) {
                    connects += (unsigned long long)nc;
                    if (res == CURLE_OK && (code == 200 || code == 304))
                        devs[s->dev].ok = 1;
                    if (res == CURLE_OK && code == 200) {
                        ok200++;
                        snprintf(devs[s->dev].etag, sizeof(devs[s->dev].etag), "%s", s->etag);
                    } else if (res == CURLE_OK && code == 304) {
                        nm304++;
                    } else {
                        errors++;
                        if (shown++ < 5)
                            fprintf(stderr, "mgmt_pollgen: device %s: %s, HTTP %ld\n", devs[s->dev].pem,
                                    curl_easy_strerror(res), code);
                    }
                    if (nlat == cap_lat && !(lat = realloc(lat, (cap_lat *= 2) * sizeof(*lat))))
                        return 2;
                    lat[nlat++] = t - s->started_us;
                    measured_end = t;
                    if (!once_now || next < ndev) {
                        START(s);
                        running++;
                    }
                }
            }
            if (running > 0)
                curl_multi_poll(m, NULL, 0, 100, NULL);
        }
    }
    double el = (double)((measured_end > t0 ? measured_end : now_us()) - t0) / 1e6;
    qsort(lat, nlat, sizeof(*lat), cmp_ll);
    double p50 = nlat ? lat[nlat / 2] / 1000.0 : 0, p99 = nlat ? lat[(nlat * 99) / 100] / 1000.0 : 0;
    size_t devices_ok = 0;
    for (size_t i = 0; i < ndev; i++)
        devices_ok += (size_t)devs[i].ok;
    printf("RESULT polls=%zu seconds=%.2f p50_ms=%.2f p99_ms=%.2f ok200=%llu nm304=%llu errors=%llu connects=%llu "
           "devices_ok=%zu\n", nlat, el, p50, p99, ok200, nm304, errors, connects, devices_ok);
    if (etags && (f = fopen(etags, "w"))) {
        for (size_t i = 0; i < ndev; i++)
            fprintf(f, "%s\n", devs[i].etag);
        if (fclose(f) != 0)
            perror(etags);
    } else if (etags) {
        perror(etags);
    }
    for (int i = 0; i < conc; i++) {
        curl_easy_cleanup(slots[i].h);
        curl_slist_free_all(slots[i].hdr);
    }
    curl_multi_cleanup(m);
    curl_global_cleanup();
    for (size_t i = 0; i < ndev; i++)
        free(devs[i].pem);
    free(devs);
    free(slots);
    free(lat);
    return errors ? 1 : 0;
}
