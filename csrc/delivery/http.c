/* libcurl transport (see http.h for the split) plus small OS helpers:
 * core.http_new, core.curl_version, core.sleep, core.now, core.url_escape.
 * Library code never exits, aborts or installs signal handlers: libcurl runs
 * with CURLOPT_NOSIGNAL and every failure becomes a return value or a Lua
 * error raised after the state it owns is reachable from a userdata. */
#define _POSIX_C_SOURCE 200809L
#include "core.h"
#include "http.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* The only process-wide state: libcurl's init, run exactly once. */
static pthread_once_t oo_curl_once = PTHREAD_ONCE_INIT;

static void oo_curl_init_once(void) {
    /* A failure here makes curl_easy_init return NULL later; that is where
     * it is reported, so nothing needs to be remembered. */
    (void)curl_global_init(CURL_GLOBAL_DEFAULT);
}

int oo_http_global_init(void) { return pthread_once(&oo_curl_once, oo_curl_init_once); }

/* ------------------------------------------------------------------ */
/* Error classification                                                */

const char *oo_http_kind(CURLcode rc) {
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT: return "tls";
    default: return "network";
    }
}

void oo_http_failure_message(CURLcode rc, const oo_http_xfer *x, char *buf, size_t n) {
    if (rc == CURLE_WRITE_ERROR && x->too_big)
        snprintf(buf, n, "response body larger than %lu bytes", (unsigned long)x->max_body);
    else if (rc == CURLE_WRITE_ERROR && x->body.oom)
        snprintf(buf, n, "out of memory storing the response body");
    else snprintf(buf, n, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
}

/* ------------------------------------------------------------------ */
/* Options                                                             */

/* The options come from the client's schema (client.lua: names, types,
 * ranges, choices), built by client.lua: C trusts them. What stays here
 * guards C only: a string is read when it is one and refused when it holds
 * a NUL (a C string would silently be another value), seconds are clamped
 * before they become milliseconds in a long, and max_body (a buffer bound)
 * stays in 1..1 GiB. */

static const char *opt_string(lua_State *L, int idx, const char *name) {
    const char *s = NULL;
    size_t len;
    lua_getfield(L, idx, name);
    if (lua_type(L, -1) == LUA_TSTRING) {
        s = lua_tolstring(L, -1, &len);
        if (strlen(s) != len) luaL_error(L, "http_new: opts.%s contains a NUL byte", name);
    }
    /* The string stays alive: opts is referenced by the caller's stack. */
    lua_pop(L, 1);
    return s;
}

static long opt_ms(lua_State *L, int idx, const char *name, long dflt) {
    double s;
    lua_getfield(L, idx, name);
    s = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : -1;
    lua_pop(L, 1);
    if (!(s >= 0)) return dflt;
    if (s > 86400.0 * 365) s = 86400.0 * 365;
    return (long)ceil(s * 1000.0);
}

static int opt_bool(lua_State *L, int idx, const char *name, int dflt) {
    int v;
    lua_getfield(L, idx, name);
    v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

void oo_http_read_opts(lua_State *L, int idx, oo_http_opts *o) {
    const char *v;
    long long n = 0;
    memset(o, 0, sizeof *o);
    o->max_body = OO_HTTP_MAX_BODY_DEFAULT;
    o->ca_cache = 1;
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    o->ca_file = opt_string(L, idx, "ca_file");
    o->ca_path = opt_string(L, idx, "ca_path");
    o->proxy = opt_string(L, idx, "proxy");
    o->user_agent = opt_string(L, idx, "user_agent");
    o->timeout_ms = opt_ms(L, idx, "timeout", 0);
    o->connect_timeout_ms = opt_ms(L, idx, "connect_timeout", 0);
    o->verbose = opt_bool(L, idx, "verbose", 0);
    o->ca_cache = opt_bool(L, idx, "ca_cache", 1);
    o->forbid_reuse = opt_bool(L, idx, "forbid_reuse", 0);
    v = opt_string(L, idx, "http_version");
    if (v && strcmp(v, "1.1") == 0) o->http_version = CURL_HTTP_VERSION_1_1;
    else if (v && strcmp(v, "2") == 0) o->http_version = CURL_HTTP_VERSION_2TLS;
    else o->http_version = CURL_HTTP_VERSION_NONE; /* "auto" */
    lua_getfield(L, idx, "max_body");
    if (lua_type(L, -1) == LUA_TNUMBER && oo_tointeger(L, -1, &n))
        o->max_body = n < 1 ? 1 : n > (long long)1 << 30 ? (size_t)1 << 30 : (size_t)n;
    lua_pop(L, 1);
}

/* Verbose tracing must not leak the site token: anything after a name that
 * looks secret is masked before it reaches stderr. For header lines the
 * name must be the header's; trace text (e.g. "[sitetoken: x]") is searched
 * anywhere. Returns how many bytes of the line may be shown, or 0. */
static size_t oo_secret_prefix(const char *line, size_t n, int header) {
    static const char *const needles[] = {"token", "authorization", "cookie", NULL};
    size_t limit = n, i, j;
    if (header) {
        for (limit = 0; limit < n && line[limit] != ':'; limit++) {}
        if (limit == n) return 0;
    }
    for (i = 0; needles[i]; i++) {
        size_t m = strlen(needles[i]);
        for (j = 0; j + m <= limit; j++) {
            size_t k;
            for (k = 0; k < m; k++) {
                char c = line[j + k];
                if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
                if (c != needles[i][k]) break;
            }
            if (k == m) return header ? limit + 1 : j + m;
        }
    }
    return 0;
}

static int oo_debug_cb(CURL *e, curl_infotype type, char *data, size_t size, void *ud) {
    const char *prefix;
    size_t i = 0;
    (void)e;
    (void)ud;
    switch (type) {
    case CURLINFO_TEXT: prefix = "* "; break;
    case CURLINFO_HEADER_IN: prefix = "< "; break;
    case CURLINFO_HEADER_OUT: prefix = "> "; break;
    default: return 0; /* bodies and TLS records are not traced */
    }
    while (i < size) {
        size_t j = i, n;
        size_t keep;
        while (j < size && data[j] != '\n') j++;
        n = j - i;
        if (n > 0 && data[i + n - 1] == '\r') n--;
        keep = oo_secret_prefix(data + i, n, type != CURLINFO_TEXT);
        if (keep > 0) fprintf(stderr, "%s%.*s [masked]\n", prefix, (int)keep, data + i);
        else if (n > 0) fprintf(stderr, "%s%.*s\n", prefix, (int)n, data + i);
        i = j + 1;
    }
    return 0;
}

#define OO_SET(opt, val)                                                                           \
    do {                                                                                           \
        rc = curl_easy_setopt(e, opt, val);                                                        \
        if (rc != CURLE_OK) return rc;                                                             \
    } while (0)

CURLcode oo_http_apply_opts(CURL *e, const oo_http_opts *o) {
    CURLcode rc;
    OO_SET(CURLOPT_NOSIGNAL, 1L);
    OO_SET(CURLOPT_SSL_VERIFYPEER, 1L);
    OO_SET(CURLOPT_SSL_VERIFYHOST, 2L);
    OO_SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2); /* TLS 1.2 at least, on every path */
    OO_SET(CURLOPT_FOLLOWLOCATION, 0L);                        /* never carry the token elsewhere */
    OO_SET(CURLOPT_TCP_KEEPALIVE, 1L);
    (void)curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https"); /* 7.85+ */
    if (o->ca_cache) {
        /* OpenSSL's CA store is cached per handle only while no CApath is
         * set, and Debian's libcurl sets one by default: without this every
         * new connection re-parses the whole bundle (~17 ms of CPU). */
        if (!o->ca_path) OO_SET(CURLOPT_CAPATH, (char *)NULL);
        (void)curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, 86400L); /* 7.87+ */
    }
    if (o->ca_file) OO_SET(CURLOPT_CAINFO, o->ca_file);
    if (o->ca_path) OO_SET(CURLOPT_CAPATH, o->ca_path);
    if (o->proxy) OO_SET(CURLOPT_PROXY, o->proxy);
    if (o->user_agent) OO_SET(CURLOPT_USERAGENT, o->user_agent);
    if (o->timeout_ms > 0) OO_SET(CURLOPT_TIMEOUT_MS, o->timeout_ms);
    if (o->connect_timeout_ms > 0) OO_SET(CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    if (o->forbid_reuse) OO_SET(CURLOPT_FORBID_REUSE, 1L);
    if (o->http_version != CURL_HTTP_VERSION_NONE) OO_SET(CURLOPT_HTTP_VERSION, o->http_version);
    if (o->verbose) {
        OO_SET(CURLOPT_DEBUGFUNCTION, oo_debug_cb);
        OO_SET(CURLOPT_VERBOSE, 1L);
    }
    return CURLE_OK;
}

/* ------------------------------------------------------------------ */
/* Transfers                                                           */

void oo_http_xfer_init(oo_http_xfer *x, size_t max_body) {
    x->headers = NULL;
    oo_buf_init(&x->body);
    x->max_body = max_body;
    x->too_big = 0;
    x->retry_after[0] = '\0';
    x->content_type[0] = '\0';
    x->errbuf[0] = '\0';
}

void oo_http_xfer_reset(oo_http_xfer *x) {
    oo_buf_free(&x->body);
    x->body.oom = 0;
    x->too_big = 0;
    x->retry_after[0] = '\0';
    x->content_type[0] = '\0';
    x->errbuf[0] = '\0';
}

void oo_http_xfer_free(oo_http_xfer *x) {
    oo_http_xfer_reset(x);
    if (x->headers) curl_slist_free_all(x->headers);
    x->headers = NULL;
}

static void oo_add_header(lua_State *L, oo_http_xfer *x, const char *s) {
    struct curl_slist *n = curl_slist_append(x->headers, s);
    if (!n) luaL_error(L, "out of memory building request headers");
    x->headers = n;
}

/* Does x->headers already hold exactly the Lua array at idx (+ "Expect:")?
 * A client sends the same headers every time: reusing the list saves a
 * dozen allocations per request. */
static int oo_headers_same(lua_State *L, int idx, int n, const oo_http_xfer *x) {
    const struct curl_slist *node = x->headers;
    int i;
    for (i = 1; i <= n; i++, node = node->next) {
        size_t len;
        const char *s;
        if (!node) return 0;
        int same;
        lua_rawgeti(L, idx, i);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            return 0;
        }
        s = lua_tolstring(L, -1, &len);
        same = strlen(node->data) == len && memcmp(node->data, s, len) == 0;
        lua_pop(L, 1);
        if (!same) return 0;
    }
    return node && strcmp(node->data, "Expect:") == 0 && node->next == NULL;
}

void oo_http_build_headers(lua_State *L, int idx, oo_http_xfer *x) {
    int i, n = 0;
    if (!lua_isnoneornil(L, idx)) {
        luaL_checktype(L, idx, LUA_TTABLE);
        n = (int)oo_rawlen(L, idx);
    }
    if (x->headers && oo_headers_same(L, idx, n, x)) return;
    if (x->headers) curl_slist_free_all(x->headers);
    x->headers = NULL;
    for (i = 1; i <= n; i++) {
        size_t len, k;
        const char *s;
        lua_rawgeti(L, idx, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "request: headers[%d] must be a string", i);
        s = lua_tolstring(L, -1, &len);
        /* A CR or LF would let a value start a new header. */
        for (k = 0; k < len; k++)
            if (s[k] == '\r' || s[k] == '\n' || s[k] == '\0')
                luaL_error(L, "request: headers[%d] contains CR, LF or NUL", i);
        if (memchr(s, ':', len) == NULL || s[0] == ':')
            luaL_error(L, "request: headers[%d] must look like \"Name: value\"", i);
        oo_add_header(L, x, s);
        lua_pop(L, 1);
    }
    /* libcurl would add "Expect: 100-continue" for larger bodies: one more
     * round trip for nothing. */
    oo_add_header(L, x, "Expect:");
}

static size_t oo_write_cb(char *ptr, size_t size, size_t nmemb, void *ud) {
    oo_http_xfer *x = (oo_http_xfer *)ud;
    size_t n = size * nmemb;
    if (n > x->max_body || x->body.len > x->max_body - n) {
        x->too_big = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    /* one byte more: the body stays '\0'-terminated for the classifier */
    if (!oo_buf_reserve(&x->body, n + 1)) return 0;
    oo_buf_add(&x->body, ptr, n);
    x->body.data[x->body.len] = '\0';
    return n;
}

static int oo_header_is(const char *line, size_t n, const char *name) {
    size_t i, m = strlen(name);
    if (n <= m || line[m] != ':') return 0;
    for (i = 0; i < m; i++) {
        char c = line[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != name[i]) return 0;
    }
    return 1;
}

static void oo_capture(char *dst, const char *line, size_t n, size_t skip) {
    size_t a = skip, b = n, len;
    while (a < b && (line[a] == ' ' || line[a] == '\t')) a++;
    while (b > a && (line[b - 1] == '\r' || line[b - 1] == '\n' || line[b - 1] == ' ' ||
                     line[b - 1] == '\t'))
        b--;
    len = b - a;
    if (len >= OO_HTTP_CAPTURE) len = OO_HTTP_CAPTURE - 1;
    memcpy(dst, line + a, len);
    dst[len] = '\0';
}

static size_t oo_header_cb(char *line, size_t size, size_t nitems, void *ud) {
    oo_http_xfer *x = (oo_http_xfer *)ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* A new response begins (after 1xx or a proxy CONNECT): forget the
         * headers of the previous one. */
        x->retry_after[0] = '\0';
        x->content_type[0] = '\0';
    } else if (oo_header_is(line, n, "retry-after")) {
        oo_capture(x->retry_after, line, n, sizeof("retry-after"));
    } else if (oo_header_is(line, n, "content-type")) {
        oo_capture(x->content_type, line, n, sizeof("content-type"));
    }
    return n;
}

CURLcode oo_http_prepare(CURL *e, oo_http_xfer *x, const char *method, const char *url,
                         const char *body, size_t body_len) {
    CURLcode rc;
    const char *custom;
    x->errbuf[0] = '\0';
    OO_SET(CURLOPT_URL, url);
    OO_SET(CURLOPT_HTTPHEADER, x->headers);
    OO_SET(CURLOPT_ERRORBUFFER, x->errbuf);
    OO_SET(CURLOPT_WRITEFUNCTION, oo_write_cb);
    OO_SET(CURLOPT_WRITEDATA, (void *)x);
    OO_SET(CURLOPT_HEADERFUNCTION, oo_header_cb);
    OO_SET(CURLOPT_HEADERDATA, (void *)x);
    OO_SET(CURLOPT_NOBODY, 0L);
    if (body) {
        OO_SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        OO_SET(CURLOPT_POSTFIELDS, body);
        custom = strcmp(method, "POST") == 0 ? NULL : method;
    } else {
        OO_SET(CURLOPT_HTTPGET, 1L);
        custom = strcmp(method, "GET") == 0 ? NULL : method;
    }
    OO_SET(CURLOPT_CUSTOMREQUEST, custom);
    return CURLE_OK;
}

void oo_http_distrust(CURL *e) {
    long status = 0, version = 0;
    curl_socket_t fd = CURL_SOCKET_BAD;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status <= 299) return;
    curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &version);
    if (version >= CURL_HTTP_VERSION_2_0) return; /* 2 and 3 */
    if (curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK && fd != CURL_SOCKET_BAD)
        shutdown(fd, SHUT_RDWR);
}

static const char *oo_http_version_name(long v) {
    switch (v) {
    case CURL_HTTP_VERSION_1_0: return "1.0";
    case CURL_HTTP_VERSION_1_1: return "1.1";
    case CURL_HTTP_VERSION_2_0: return "2";
#ifdef CURL_HTTP_VERSION_3
    case CURL_HTTP_VERSION_3: return "3";
#endif
    default: return "unknown";
    }
}

int oo_http_push_result(lua_State *L, CURL *e, CURLcode rc, oo_http_xfer *x) {
    long status = 0, connects = 0, version = 0;
    double total = 0;
    if (rc != CURLE_OK) {
        char msg[CURL_ERROR_SIZE + 64];
        oo_http_failure_message(rc, x, msg, sizeof msg);
        lua_pushnil(L);
        lua_pushstring(L, oo_http_kind(rc));
        lua_pushstring(L, msg);
        lua_pushinteger(L, (lua_Integer)rc);
        return 4;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &connects);
    curl_easy_getinfo(e, CURLINFO_TOTAL_TIME, &total);
    curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &version);
    lua_pushinteger(L, (lua_Integer)status);
    lua_pushlstring(L, x->body.data, x->body.len);
    lua_createtable(L, 0, 6);
    if (x->retry_after[0]) {
        lua_pushstring(L, x->retry_after);
        lua_setfield(L, -2, "retry_after");
    }
    if (x->content_type[0]) {
        lua_pushstring(L, x->content_type);
        lua_setfield(L, -2, "content_type");
    }
    lua_pushinteger(L, (lua_Integer)connects);
    lua_setfield(L, -2, "connect_count");
    lua_pushboolean(L, connects == 0); /* 0 new connections: one was reused */
    lua_setfield(L, -2, "reused");
    lua_pushnumber(L, (lua_Number)total);
    lua_setfield(L, -2, "total_time");
    lua_pushstring(L, oo_http_version_name(version));
    lua_setfield(L, -2, "http_version");
    return 3;
}

/* ------------------------------------------------------------------ */
/* The Lua "easy" object                                               */

typedef struct oo_http {
    CURL *easy; /* NULL once closed */
    oo_http_xfer x;
} oo_http;

static oo_http *check_open(lua_State *L) {
    oo_http *h = (oo_http *)luaL_checkudata(L, 1, OO_HTTP_MT);
    if (!h->easy) luaL_error(L, "http handle is closed");
    return h;
}

static void oo_http_release(oo_http *h) {
    if (h->easy) curl_easy_cleanup(h->easy);
    h->easy = NULL;
    oo_http_xfer_free(&h->x);
}

/*** Create a transfer handle.
 * @param opts {ca_file, ca_path, proxy, timeout, connect_timeout, user_agent,
 *   max_body, verbose, ca_cache, forbid_reuse, http_version} (all optional);
 *   http_version "1.1" | "2" | "auto" (default: libcurl's, i.e. h2 via ALPN)
 * @return handle */
static int l_http_new(lua_State *L) {
    oo_http_opts o;
    oo_http *h;
    CURLcode rc;
    oo_http_read_opts(L, 1, &o);
    if (oo_http_global_init() != 0) return luaL_error(L, "http_new: libcurl init failed");
    h = (oo_http *)lua_newuserdata(L, sizeof *h);
    h->easy = NULL;
    oo_http_xfer_init(&h->x, o.max_body);
    oo_setmetatable(L, OO_HTTP_MT); /* from here __gc frees whatever we own */
    h->easy = curl_easy_init();
    if (!h->easy) return luaL_error(L, "http_new: curl_easy_init failed");
    rc = oo_http_apply_opts(h->easy, &o);
    if (rc != CURLE_OK) {
        oo_http_release(h);
        return luaL_error(L, "http_new: %s", curl_easy_strerror(rc));
    }
    return 1;
}

/*** h:request(method, url, headers, body) → status, body, info
 * or nil, kind, message, curl_code. */
static int l_request(lua_State *L) {
    oo_http *h = check_open(L);
    size_t mlen, blen = 0, i;
    const char *method = luaL_checklstring(L, 2, &mlen);
    const char *url = luaL_checkstring(L, 3);
    const char *body = NULL;
    CURLcode rc;
    int n;
    if (mlen == 0 || mlen > 16) luaL_argerror(L, 2, "bad HTTP method");
    for (i = 0; i < mlen; i++)
        if (method[i] < 'A' || method[i] > 'Z') luaL_argerror(L, 2, "bad HTTP method");
    if (!lua_isnoneornil(L, 5)) body = luaL_checklstring(L, 5, &blen);
    oo_http_xfer_reset(&h->x);
    oo_http_build_headers(L, 4, &h->x);
    rc = oo_http_prepare(h->easy, &h->x, method, url, body, blen);
    if (rc == CURLE_OK) rc = curl_easy_perform(h->easy);
    if (rc == CURLE_OK) oo_http_distrust(h->easy);
    /* The body string is about to become collectable: drop the pointer. */
    curl_easy_setopt(h->easy, CURLOPT_POSTFIELDS, (char *)NULL);
    n = oo_http_push_result(L, h->easy, rc, &h->x);
    oo_http_xfer_reset(&h->x); /* the body copy is done; headers stay cached */
    return n;
}

static int l_close(lua_State *L) {
    oo_http *h = (oo_http *)luaL_checkudata(L, 1, OO_HTTP_MT);
    oo_http_release(h);
    return 0;
}

static int l_gc(lua_State *L) {
    oo_http *h = (oo_http *)luaL_checkudata(L, 1, OO_HTTP_MT);
    oo_http_release(h);
    return 0;
}

static int l_tostring(lua_State *L) {
    oo_http *h = (oo_http *)luaL_checkudata(L, 1, OO_HTTP_MT);
    if (h->easy) lua_pushfstring(L, "optimizely.offline.http (%p)", (void *)h);
    else lua_pushliteral(L, "optimizely.offline.http (closed)");
    return 1;
}

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

/*** core.curl_version() → "7.88.1", TLS library (e.g. "OpenSSL/3.0.2").
 * Not curl_version(): that string makes libldap initialise SASL, whose
 * allocations are never freed (noise under valgrind). */
static int l_curl_version(lua_State *L) {
    curl_version_info_data *d = curl_version_info(CURLVERSION_NOW);
    lua_pushstring(L, d && d->version ? d->version : "unknown");
    lua_pushstring(L, d && d->ssl_version ? d->ssl_version : "none");
    return 2;
}

/* Percent-encodes s into out (3 * n + 1 bytes): all but A-Za-z0-9-_~,
 * and '.' too unless keep_dot. Returns the length written. */
static size_t escape(const char *s, size_t n, int keep_dot, char *out) {
    static const char hex[] = "0123456789ABCDEF";
    size_t i, k = 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '~' || (c == '.' && keep_dot)) {
            out[k++] = (char)c;
        } else {
            out[k++] = '%';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        }
    }
    out[k] = '\0';
    return k;
}

char *oo_url_segment(const char *s, size_t n, size_t *out_len) {
    char *out = (char *)malloc(3 * n + 1);
    if (!out) return NULL;
    *out_len = escape(s, n, 0, out);
    return out;
}

static int push_escaped(lua_State *L, int keep_dot) {
    size_t len, n;
    const char *s = luaL_checklstring(L, 1, &len);
    char *out =
        (char *)lua_newuserdata(L, 3 * len + 1); /* freed by the collector, also on a raise */
    n = escape(s, len, keep_dot, out);
    lua_pushlstring(L, out, n);
    return 1;
}

/*** core.url_escape(s): percent-encodes all but unreserved A-Za-z0-9-._~ */
static int l_url_escape(lua_State *L) { return push_escaped(L, 1); }

/*** core.url_segment(s): s as one URL path segment (oo_url_segment) */
static int l_url_segment(lua_State *L) { return push_escaped(L, 0); }

void oo_http_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"request", l_request}, {"close", l_close}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"http_new", l_http_new},
                                     {"curl_version", l_curl_version},
                                     {"url_escape", l_url_escape},
                                     {"url_segment", l_url_segment},
                                     {NULL, NULL}};
    oo_newclass(L, OO_HTTP_MT, methods, l_gc, l_close, l_tostring);
    oo_setfuncs(L, funcs, 0);
}
