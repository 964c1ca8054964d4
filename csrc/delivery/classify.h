/* The one response classifier. Every delivery path — the libcurl easy
 * handle, the curl multi engine, the queue's thread, the nginx cosocket
 * engine and user transports (through Lua) — turns what came back into this
 * record, and the retry policy (policy.h) decides from the record alone.
 *
 * Rules (spec §5; the endpoint documents no statuses, see README):
 *   2xx + envelope "status":"fail"     kind "api", not retryable
 *   2xx + "OK" / "warning" / no JSON    delivered (warned when the envelope
 *                                       carries warnings or an odd status)
 *   408, 429, 500, 502, 503, 504        kind "http", retryable
 *   other statuses                      kind "http", not retryable
 *   401 / 403, or an envelope code that names the site, token or channel
 *                                       kind "auth", not retryable, stop = 1:
 *                                       nothing more is sent with these
 *                                       credentials until they change
 *   transport failures                  "network" / "timeout" retryable,
 *                                       "tls" not
 * Only the TOP-LEVEL envelope status counts.
 *
 * Contract: the body handed to oo_classify_response must be NUL-terminated,
 * body[len] == '\0' (one byte past the length, readable). The envelope walk
 * (oo_json_envelope, json.h) scans with that byte as its sentinel and would
 * read past the buffer without it. Every caller provides it: a Lua string
 * always is terminated (core.classify, user transports), libcurl's write
 * callback keeps one byte more (http.c oo_write_cb), and a NULL body reads
 * as "". The fuzz targets (fuzz/fuzz_classify.c, fuzz/fuzz_labels.c) hold to
 * it too. */
#ifndef OO_CLASSIFY_H
#define OO_CLASSIFY_H

#include <stddef.h>
#include "json.h"

typedef struct oo_outcome {
    int ok;           /* delivered */
    const char *kind; /* NULL when ok; "api" | "http" | "auth" | "network" | "timeout" | "tls" */
    int status;       /* HTTP status; 0 for a transport failure */
    int retryable;
    int stop;           /* bad credentials: stop sending with them */
    int warned;         /* delivered with warnings worth reading (envelope) */
    int throttled;      /* the server asked every request to slow down (a 429) */
    double retry_after; /* seconds from Retry-After, -1 when absent or unusable */
    int transport_code; /* the transport's own error number (libcurl's CURLcode), 0 none */
    char code[64];      /* the first API error code, "" when none */
    char message[300];  /* one line for people (no control characters) */
} oo_outcome;

/* Is an HTTP status retryable (408, 429, 500, 502, 503, 504)? */
int oo_status_retryable(int status);

/* A response: status, the raw Retry-After header value (NULL/"" if none),
 * the body (NUL-terminated: body[len] must be '\0', see above) and the
 * wall-clock time (for HTTP-date Retry-After). env may be NULL; when given
 * it receives the parsed envelope (callers that need the errors list
 * reuse it). */
void oo_classify_response(int status, const char *retry_after, const char *body, size_t len,
                          double now, oo_outcome *o, oo_envelope *env);

/* Seconds a raw Retry-After value asks for: delay-seconds (digits only,
 * RFC 9110) or an HTTP date relative to `now`; -1 when absent or unusable
 * ("0x10", "3.5", "1e1" are not delay-seconds). */
double oo_retry_after(const char *value, double now);

/* An HTTP date (IMF-fixdate, RFC 850 or asctime) in epoch seconds, or -1. */
double oo_http_date(const char *s);

/* A transport failure of kind "network" | "timeout" | "tls" (anything
 * else counts as "network"; "transport" is oo_classify_broken) with its
 * message. */
void oo_classify_failure(const char *kind, const char *message, oo_outcome *o);

/* A transport that broke its contract (status, body or info of the wrong
 * type, a failure without a kind): kind "transport", not retryable; `what`
 * says what was wrong. */
void oo_classify_broken(const char *what, oo_outcome *o);

/* Does an API error code name the site, the token or the channel? */
int oo_code_is_credentials(const char *code);

/* Pushes the record as a Lua table {ok, kind, status, code, message,
 * retryable, retry_after, stop, warned, throttled, curl_code} (false/absent
 * fields left out). */
void oo_push_outcome(lua_State *L, const oo_outcome *o);

/* The same fields, set in the table on top of the stack (a caller that
 * adds its own sizes the table once). */
void oo_outcome_fields(lua_State *L, const oo_outcome *o);

void oo_classify_register(lua_State *L);

#endif
