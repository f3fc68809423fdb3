/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The kill switch's nftables table (see esp_nft.h). The ruleset is composed
 * here as text and handed to libnftables in one call, which the library turns
 * into one netlink transaction: the kernel applies all of it or nothing.
 *
 * libnftables is loaded (dlopen) only for the moment of a change and
 * unloaded again: linked in, it and its five dependencies cost a running
 * client about 1.8 MB of resident memory for good (measured), for a few
 * calls per profile load. Without the library on the device, the layer is
 * absent (reported), as on a kernel without nf_tables. Removing the table
 * (every set-up and tear-down) needs no library: one netlink message.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <m2mvpn/m2mvpn.h>

#include "esp_nft.h"

#ifdef M2MVPN_HAVE_NFTABLES
#include <dlfcn.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <malloc.h>
#include <nftables/libnftables.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NFT_LIBRARY "libnftables.so.1"
#endif

static void set_msg(char *out, size_t out_len, const char *text)
{
    if (out && out_len)
        snprintf(out, out_len, "%s", text);
}

void esp_nft_table_name(const char *tun, char *out, size_t out_len)
{
    snprintf(out, out_len, "inet m2mvpn_%s", tun);
}

/* Interface names are nearly free-form; the table name and the quoted
 * oifname must stay within what the nftables grammar takes as they are. */
static bool name_ok(const char *tun)
{
    size_t len = strlen(tun);
    if (len == 0 || len >= 16)
        return false;
    for (const char *c = tun; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '_' || *c == '-'))
            return false;
    return true;
}

#ifdef M2MVPN_HAVE_NFTABLES

/* The calls we use, from the loaded library. */
typedef struct nft_api {
    void *lib;
    struct nft_ctx *(*ctx_new)(uint32_t flags);
    void (*ctx_free)(struct nft_ctx *ctx);
    int (*buffer_output)(struct nft_ctx *ctx);
    int (*buffer_error)(struct nft_ctx *ctx);
    const char *(*error_buffer)(struct nft_ctx *ctx);
    int (*run_cmd)(struct nft_ctx *ctx, const char *buf);
} nft_api;

static bool api_open(nft_api *a, char *err, size_t err_len)
{
    memset(a, 0, sizeof(*a));
    a->lib = dlopen(NFT_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!a->lib) {
        const char *why = dlerror();
        snprintf(err, err_len, "%s not loaded: %s", NFT_LIBRARY, why ? why : "?");
        return false;
    }
    /* POSIX: a function pointer from dlsym's void * (through memcpy, which
     * ISO C allows). */
#define NFT_SYM(field, name)                                       \
    do {                                                           \
        void *p = dlsym(a->lib, name);                             \
        memcpy(&a->field, &p, sizeof(p));                          \
    } while (0)
    NFT_SYM(ctx_new, "nft_ctx_new");
    NFT_SYM(ctx_free, "nft_ctx_free");
    NFT_SYM(buffer_output, "nft_ctx_buffer_output");
    NFT_SYM(buffer_error, "nft_ctx_buffer_error");
    NFT_SYM(error_buffer, "nft_ctx_get_error_buffer");
    NFT_SYM(run_cmd, "nft_run_cmd_from_buffer");
#undef NFT_SYM
    if (!a->ctx_new || !a->ctx_free || !a->buffer_output || !a->buffer_error ||
        !a->error_buffer || !a->run_cmd) {
        snprintf(err, err_len, "%s lacks the calls we use", NFT_LIBRARY);
        dlclose(a->lib);
        a->lib = NULL;
        return false;
    }
    return true;
}

static void api_close(nft_api *a)
{
    if (a->lib)
        dlclose(a->lib);
    a->lib = NULL;
    malloc_trim(0); /* the parser's heap back to the system */
}

/* Run one buffer; 0 or -1 with nftables' own message (first line) in err. */
static int run(const nft_api *a, const char *cmds, char *err, size_t err_len)
{
    struct nft_ctx *nft = a->ctx_new(NFT_CTX_DEFAULT);
    if (!nft) {
        set_msg(err, err_len, "nftables: out of memory");
        return -1;
    }
    a->buffer_output(nft);
    a->buffer_error(nft);
    int rc = a->run_cmd(nft, cmds);
    if (rc != 0 && err && err_len) {
        const char *msg = a->error_buffer(nft);
        size_t len = msg ? strcspn(msg, "\n") : 0;
        snprintf(err, err_len, "nftables: %.*s", (int)len, len ? msg : "failed");
    }
    a->ctx_free(nft);
    return rc == 0 ? 0 : -1;
}

/* Appends with a sticky overflow flag: one check at the end. */
typedef struct text {
    char *buf;
    size_t cap, len;
    bool overflow;
} text;

static void add(text *t, const char *fmt_or_text, const char *arg)
{
    if (t->overflow)
        return;
    int n = arg ? snprintf(t->buf + t->len, t->cap - t->len, fmt_or_text, arg)
                : snprintf(t->buf + t->len, t->cap - t->len, "%s", fmt_or_text);
    if (n < 0 || (size_t)n >= t->cap - t->len)
        t->overflow = true;
    else
        t->len += (size_t)n;
}

/* The elements of one family, "a/n, b/m"; false if there are none. */
static bool add_elements(text *t, int family, const esp_prefix *p, size_t n)
{
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        if (p[i].family != family)
            continue;
        char addr[INET6_ADDRSTRLEN], item[INET6_ADDRSTRLEN + 8];
        if (!inet_ntop(family, p[i].addr, addr, sizeof(addr))) {
            t->overflow = true;
            return any;
        }
        snprintf(item, sizeof(item), "%s%s/%u", any ? ", " : "", addr, p[i].prefix_len);
        add(t, item, NULL);
        any = true;
    }
    return any;
}

static void add_set(text *t, const char *name, const char *type, int family,
                    const esp_prefix *p, size_t n)
{
    add(t, "\tset %s {\n", name);
    add(t, "\t\ttype %s\n\t\tflags interval\n\t\tauto-merge\n", type);
    add(t, "\t\telements = { ", NULL);
    add_elements(t, family, p, n);
    add(t, " }\n\t}\n", NULL);
}

static bool has_family(const esp_prefix *p, size_t n, int family)
{
    for (size_t i = 0; i < n; i++)
        if (p[i].family == family)
            return true;
    return false;
}

/* "a, b": the addresses of one family (prefix lengths left out: hosts). */
static void add_hosts(text *t, int family, const esp_prefix *p, size_t n)
{
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        char addr[INET6_ADDRSTRLEN];
        if (p[i].family != family)
            continue;
        if (!inet_ntop(family, p[i].addr, addr, sizeof(addr))) {
            t->overflow = true;
            return;
        }
        add(t, any ? ", " : "", NULL);
        add(t, addr, NULL);
        any = true;
    }
}

/* "500, 4500[, p...]": the UDP destination ports our marked sockets use. */
static void add_ike_ports(text *t, const uint16_t *ports, size_t n)
{
    add(t, "500, 4500", NULL);
    for (size_t i = 0; i < n; i++) {
        bool dup = ports[i] == 0 || ports[i] == 500 || ports[i] == 4500;
        for (size_t k = 0; k < i && !dup; k++)
            dup = ports[k] == ports[i];
        if (dup)
            continue;
        char item[16];
        snprintf(item, sizeof(item), ", %u", (unsigned)ports[i]);
        add(t, item, NULL);
    }
}

int esp_nft_apply(const char *tun, uint32_t fwmark, const esp_prefix *prefixes, size_t n,
                  const uint16_t *ike_ports, size_t n_ike_ports, const esp_prefix *vips, size_t n_vips,
                  bool *active, char *why, size_t why_len, char *err, size_t err_len)
{
    *active = false;
    if (!name_ok(tun)) {
        set_msg(err, err_len, "nftables: the TUN name may only contain A-Z a-z 0-9 . _ -");
        return M2MVPN_E_INVAL;
    }
    if (n == 0) {
        esp_nft_remove(tun);
        set_msg(why, why_len, "no protected prefixes");
        return 0;
    }
    char buf[8192], mark[16];
    text t = { buf, sizeof(buf), 0, false };
    snprintf(mark, sizeof(mark), "0x%08x", fwmark);
    /* add + delete first: the replacement works whether or not a table (of
     * an engine that died) is there, in the same transaction. */
    add(&t, "add table inet m2mvpn_%s\n", tun);
    add(&t, "delete table inet m2mvpn_%s\n", tun);
    add(&t, "add table arp m2mvpn_%s\n", tun);
    add(&t, "delete table arp m2mvpn_%s\n", tun);
    /* The virtual IPv4 address never asks a link for a neighbour: after a
     * roam, a socket still bound to the old interface (which lost its
     * address) would have the kernel pick it as the source and ARP for the
     * gateway with it there, telling that link our address in the tunnel. */
    bool vip4 = has_family(vips, n_vips, AF_INET), vip6 = has_family(vips, n_vips, AF_INET6);
    if (vip4) {
        add(&t, "table arp m2mvpn_%s {\n", tun);
        add(&t, "\tchain vip_guard {\n\t\ttype filter hook output priority filter; policy accept;\n"
                "\t\tarp saddr ip { ", NULL);
        add_hosts(&t, AF_INET, vips, n_vips);
        add(&t, " } counter drop\n\t}\n}\n", NULL);
    }
    add(&t, "table inet m2mvpn_%s {\n", tun);
    bool v4 = has_family(prefixes, n, AF_INET), v6 = has_family(prefixes, n, AF_INET6);
    if (v4)
        add_set(&t, "protected4", "ipv4_addr", AF_INET, prefixes, n);
    if (v6)
        add_set(&t, "protected6", "ipv6_addr", AF_INET6, prefixes, n);
    add(&t, "\tchain leak_guard {\n"
            "\t\ttype filter hook postrouting priority filter; policy accept;\n", NULL);
    add(&t, "\t\toifname { \"lo\", \"%s\" } accept\n", tun);
    /* Nothing from a virtual IP leaves by another interface (sent there
     * by a socket bound to an interface without address of its own, our
     * marked ones included). */
    if (vip4) {
        add(&t, "\t\tip saddr { ", NULL);
        add_hosts(&t, AF_INET, vips, n_vips);
        add(&t, " } counter drop\n", NULL);
    }
    if (vip6) {
        add(&t, "\t\tip6 saddr { ", NULL);
        add_hosts(&t, AF_INET6, vips, n_vips);
        add(&t, " } counter drop\n", NULL);
    }
    /* Our IKE and ESP-in-UDP packets (full tunnel: the gateway is inside a
     * protected prefix), and nothing else that carries the mark. */
    add(&t, "\t\tmeta mark %s udp dport { ", mark);
    add_ike_ports(&t, ike_ports, n_ike_ports);
    add(&t, " } accept\n", NULL);
    /* IPv6 neighbour discovery (RFC 4861, hop limit 255) must pass even when
     * the protected prefix is ::/0: without it the gateway's link-layer
     * address is never learnt and IKE itself cannot leave. Router and
     * neighbour solicitations and advertisements of neighbours go to
     * link-local and link-scope multicast addresses (solicited-node
     * ff02::1:ff00:0/104, all-routers); we never send router
     * advertisements. An on-link gateway with a global address is also
     * solicited (unreachability detection) and answered (its solicitation
     * comes from that address) at its global address: NS and NA only, code
     * 0, no more than the header and one link-layer address option, so no
     * room for data to a protected host. */
    if (v6) {
        add(&t, "\t\ticmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } "
                "ip6 hoplimit 255 ip6 daddr { fe80::/10, ff02::/16 } accept\n", NULL);
        add(&t, "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } icmpv6 code 0 "
                "ip6 hoplimit 255 ip6 length <= 32 accept\n", NULL);
    }
    if (v4)
        add(&t, "\t\tip daddr @protected4 counter drop\n", NULL);
    if (v6)
        add(&t, "\t\tip6 daddr @protected6 counter drop\n", NULL);
    add(&t, "\t}\n}\n", NULL);
    if (t.overflow) {
        set_msg(err, err_len, "nftables: ruleset too long");
        return M2MVPN_E_TUN;
    }
    nft_api api;
    if (!api_open(&api, why, why_len))
        return 0; /* no libnftables on this device: policy routing alone */
    int rc = 0;
    if (run(&api, buf, err, err_len) == 0) {
        *active = true;
    } else {
        /* Refused: is it only that this kernel has no nf_tables at all? Then
         * policy routing alone holds the kill switch; anything else is an error. */
        char probe_err[160];
        if (run(&api, "list tables", probe_err, sizeof(probe_err)) != 0)
            snprintf(why, why_len, "no nf_tables in this kernel (%s)", probe_err);
        else
            rc = M2MVPN_E_TUN;
    }
    api_close(&api);
    return rc;
}

/* One nf_tables message: netlink header, nfgenmsg, and the table name as
 * the only attribute (NFTA_TABLE_NAME, or none for the batch markers). */
static size_t put_msg(uint8_t *out, uint16_t type, uint16_t flags, uint32_t seq, uint8_t family,
                      uint16_t res_id, const char *table)
{
    size_t name_len = table ? strlen(table) + 1 : 0;
    size_t len = NLMSG_LENGTH(sizeof(struct nfgenmsg)) + (table ? NLA_ALIGN(NLA_HDRLEN + name_len) : 0);
    memset(out, 0, len);
    struct nlmsghdr *nh = (struct nlmsghdr *)out;
    nh->nlmsg_len = (uint32_t)len;
    nh->nlmsg_type = type;
    nh->nlmsg_flags = flags;
    nh->nlmsg_seq = seq;
    struct nfgenmsg *g = NLMSG_DATA(nh);
    g->nfgen_family = family;
    g->version = NFNETLINK_V0;
    g->res_id = htons(res_id);
    if (table) {
        struct nlattr *a = (struct nlattr *)(out + NLMSG_LENGTH(sizeof(*g)));
        a->nla_len = (uint16_t)(NLA_HDRLEN + name_len);
        a->nla_type = NFTA_TABLE_NAME;
        memcpy((uint8_t *)a + NLA_HDRLEN, table, name_len);
    }
    return len;
}

/* Deletes one nftables table of `family` over nfnetlink and waits for the
 * kernel's answer (done or ENOENT), so that it is gone when we return. */
static void del_table(int fd, uint8_t family, const char *table, uint32_t seq)
{
    uint8_t req[256] __attribute__((aligned(4)));
    size_t len = put_msg(req, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, AF_UNSPEC, NFNL_SUBSYS_NFTABLES,
                         NULL);
    len += put_msg(req + len, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK,
                   seq + 1, family, 0, table);
    len += put_msg(req + len, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, AF_UNSPEC, NFNL_SUBSYS_NFTABLES,
                   NULL);
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    if (sendto(fd, req, len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) != (ssize_t)len)
        return;
    uint8_t resp[512] __attribute__((aligned(4)));
    for (int tries = 0; tries < 4; tries++) {
        ssize_t n = recv(fd, resp, sizeof(resp), 0);
        if (n <= 0)
            break;
        bool done = false;
        for (struct nlmsghdr *nh = (struct nlmsghdr *)resp; NLMSG_OK(nh, (size_t)n); nh = NLMSG_NEXT(nh, n))
            if (nh->nlmsg_type == NLMSG_ERROR && nh->nlmsg_seq >= seq && nh->nlmsg_seq <= seq + 2)
                done = true;
        if (done)
            break;
    }
}

/* Straight to the kernel, a DELTABLE per table (inet and arp): no table (ENOENT) is the
 * usual answer. Not through libnftables: this runs on every tunnel set-up
 * and tear-down, kill switch or not, and loading the library and its
 * parser for it left about 40 KB of heap and stack touched for good in
 * every client (bench/footprint). */
void esp_nft_remove(const char *tun)
{
    if (!name_ok(tun))
        return;
    char table[32];
    snprintf(table, sizeof(table), "m2mvpn_%s", tun);
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0)
        return; /* no nfnetlink in this kernel: no table either */
    struct timeval tv = { .tv_sec = 2 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    uint32_t seq = (uint32_t)time(NULL);
    /* One batch per table: a batch is one transaction, and the ENOENT of a
     * table that is not there would undo the other's deletion. */
    del_table(fd, NFPROTO_INET, table, seq);
    del_table(fd, NFPROTO_ARP, table, seq + 3);
    close(fd);
}

#else /* !M2MVPN_HAVE_NFTABLES */

int esp_nft_apply(const char *tun, uint32_t fwmark, const esp_prefix *prefixes, size_t n,
                  const uint16_t *ike_ports, size_t n_ike_ports, const esp_prefix *vips, size_t n_vips,
                  bool *active, char *why, size_t why_len, char *err, size_t err_len)
{
    (void)fwmark;
    (void)vips;
    (void)n_vips;
    (void)ike_ports;
    (void)n_ike_ports;
    (void)prefixes;
    (void)n;
    *active = false;
    if (!name_ok(tun)) {
        set_msg(err, err_len, "nftables: the TUN name may only contain A-Z a-z 0-9 . _ -");
        return M2MVPN_E_INVAL;
    }
    set_msg(why, why_len, "built without nftables");
    return 0;
}

void esp_nft_remove(const char *tun)
{
    (void)tun;
}

#endif
