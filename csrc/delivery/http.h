/* libcurl transport: one easy handle per client, reused across requests.
 *
 * The pieces are split so that a curl multi batch sender can reuse them:
 *   oo_http_apply_opts   per-handle options (TLS, CA cache, timeouts, proxy)
 *   oo_http_xfer_*       per-transfer state (headers, response capture)
 *   oo_http_prepare      per-request options on any easy handle
 *   oo_http_push_result  turns a finished transfer into Lua return values
 * Nothing here keeps global state except libcurl's one-time init. */
#ifndef OO_HTTP_H
#define OO_HTTP_H

#include <curl/curl.h>
#include "buf.h"
#include "compat.h"

#define OO_HTTP_MT "optimizely.offline.http"
#define OO_HTTP_MAX_BODY_DEFAULT (1024 * 1024)
#define OO_HTTP_CAPTURE 256

/* Per-handle options. Strings point into Lua strings that stay on the
 * stack while oo_http_apply_opts runs (libcurl copies them). */
typedef struct oo_http_opts {
    const char *ca_file;
    const char *ca_path;
    const char *proxy;
    const char *user_agent;
    long timeout_ms;         /* whole request; 0 = none */
    long connect_timeout_ms; /* 0 = libcurl default */
    size_t max_body;         /* response body cap in bytes */
    int verbose;             /* debug trace to stderr, sensitive values masked */
    int ca_cache;            /* keep OpenSSL's CA store cached (default on) */
    int forbid_reuse;        /* new connection per request (benchmarks) */
    long http_version;       /* CURL_HTTP_VERSION_*; NONE = libcurl's default */
} oo_http_opts;

/* State of one transfer: request headers and what the response brought. */
typedef struct oo_http_xfer {
    struct curl_slist *headers;
    oo_buf body;
    size_t max_body;
    int too_big;
    char retry_after[OO_HTTP_CAPTURE];
    char content_type[OO_HTTP_CAPTURE];
    char errbuf[CURL_ERROR_SIZE];
} oo_http_xfer;

/* curl_global_init exactly once per process (pthread_once). 0 on success. */
int oo_http_global_init(void);

/* Reads the opts table at idx (or nil) into *o, trusting the client's
 * schema to have checked it (see http.c); raises only on a NUL in a string. */
void oo_http_read_opts(lua_State *L, int idx, oo_http_opts *o);

/* Sets the per-handle options on e. Returns the first failing CURLcode. */
CURLcode oo_http_apply_opts(CURL *e, const oo_http_opts *o);

void oo_http_xfer_init(oo_http_xfer *x, size_t max_body);
/* Clears the captured response; the header list is kept for reuse. */
void oo_http_xfer_reset(oo_http_xfer *x);
/* Frees everything, header list included. */
void oo_http_xfer_free(oo_http_xfer *x);

/* Builds x->headers from the Lua array of "Name: value" strings at idx
 * (nil = none) plus an empty "Expect:", keeping the previous list when it
 * is identical. Raises on a non-string or a value with CR/LF/NUL; the list
 * stays owned by x, so nothing leaks on a raise. */
void oo_http_build_headers(lua_State *L, int idx, oo_http_xfer *x);

/* Per-request options: method, URL, headers from x, body (NULL = none;
 * not copied, so it must outlive the transfer) and the capture callbacks. */
CURLcode oo_http_prepare(CURL *e, oo_http_xfer *x, const char *method, const char *url,
                         const char *body, size_t body_len);

/* The reuse rule: a connection is never trusted after an answer it did
 * not fully understand. After a non-2xx answer over HTTP/1.x the finished
 * transfer's connection is shut down, so libcurl finds it dead and opens a
 * new one instead of reusing it: a server that wrote a stray response
 * after its answer (a 503, then "200 OK") cannot have that stray read as
 * the answer to the next request. Bytes beyond the declared body in the
 * same read make libcurl close the connection itself ("excess found").
 * HTTP/2 frames every answer: nothing can be misread, the connection
 * stays. Call it with the handle of a transfer that just finished (easy
 * perform, or a multi message before the handle is removed). libcurl's
 * own connection cache is not reachable otherwise: shutting the socket is
 * the "close instead of reuse" of CURLOPT_FORBID_REUSE, decided after the
 * status is known (libcurl options cannot change inside its callbacks). */
void oo_http_distrust(CURL *e);

/* A refCode as one URL path segment: every byte but A-Za-z0-9-_~
 * percent-encoded, '.' too (libcurl would remove "." and ".." segments and
 * reach another URL) — the cancel URLs of client:cancel and of the queue's
 * cancel rows. A malloc'd string (NULL: no memory), its length in *out_len. */
char *oo_url_segment(const char *s, size_t n, size_t *out_len);

/* "network" | "timeout" | "tls" for a failed transfer. */
const char *oo_http_kind(CURLcode rc);

/* One line saying why a transfer failed (the body cap, memory, or curl's
 * own words), the same on every path. */
void oo_http_failure_message(CURLcode rc, const oo_http_xfer *x, char *buf, size_t n);

/* Pushes `status, body, info` or `nil, kind, message, curl_code`.
 * Returns the number of values pushed. */
int oo_http_push_result(lua_State *L, CURL *e, CURLcode rc, oo_http_xfer *x);

#endif
