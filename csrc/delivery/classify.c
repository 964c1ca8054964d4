/* The one response classifier (see classify.h), Retry-After included.
 * Lua: core.classify, core.classify_failure, core.envelope,
 * core.parse_retry_after, core.parse_http_date. */
#include "classify.h"
#include "core.h"
#include "clock.h"
#include "date.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int oo_status_retryable(int status) {
    switch (status) {
    case 408:
    case 429:
    case 500:
    case 502:
    case 503:
    case 504: return 1;
    default: return 0;
    }
}

/* Credential codes: the documented ones (SiteNotRecognized,
 * InvalidSiteToken, ChannelNotRecognized, ...) and any code that names the
 * site, token or channel together with a word saying it is wrong. */
int oo_code_is_credentials(const char *code) {
    static const char *const subjects[] = {"token", "site", "channel", "credential", NULL};
    static const char *const verdicts[] = {
        "invalid",   "unknown", "notrecogni", "missing", "wrong",    "expired", "unauthori",
        "forbidden", "denied",  "mismatch",   "revoked", "notfound", NULL};
    char low[64];
    size_t i, n;
    int subject = 0;
    if (!code || !code[0]) return 0;
    n = strlen(code);
    if (n >= sizeof low) n = sizeof low - 1;
    for (i = 0; i < n; i++)
        low[i] = (char)((code[i] >= 'A' && code[i] <= 'Z') ? code[i] + 32 : code[i]);
    low[n] = '\0';
    if (strcmp(low, "unauthorized") == 0 || strcmp(low, "forbidden") == 0 ||
        strcmp(low, "accessdenied") == 0)
        return 1;
    for (i = 0; subjects[i] && !subject; i++) subject = strstr(low, subjects[i]) != NULL;
    if (!subject) return 0;
    for (i = 0; verdicts[i]; i++)
        if (strstr(low, verdicts[i])) return 1;
    return 0;
}

/* Appends text to o->message as one line (control bytes become spaces),
 * ending with "..." when it does not fit. */
static void say(oo_outcome *o, const char *text) {
    size_t cap = sizeof o->message, n = strlen(o->message);
    for (; text && *text; text++) {
        unsigned char c = (unsigned char)*text;
        if (n + 1 >= cap) {
            memcpy(o->message + cap - 4, "...", 4);
            return;
        }
        o->message[n++] = (char)(c < 0x20 || c == 0x7f ? ' ' : c);
    }
    o->message[n] = '\0';
}

/* "code: message (+N more)" of the envelope's errors, after a prefix. */
static void describe(oo_outcome *o, const oo_envelope *env) {
    const oo_env_item *e = &env->errors[0];
    char more[32];
    if (env->nerrors == 0) return;
    say(o, ": ");
    if (e->code) say(o, e->code);
    if (e->code && e->message) say(o, ": ");
    if (e->message) say(o, e->message);
    if (!e->code && !e->message) say(o, "(no code)");
    if (env->nerrors > 1) {
        snprintf(more, sizeof more, " (+%d more)", env->nerrors - 1);
        say(o, more);
    }
}

static void reset(oo_outcome *o) {
    o->ok = o->retryable = o->stop = o->warned = o->throttled = o->transport_code = 0;
    o->kind = NULL;
    o->status = 0;
    o->retry_after = -1;
    o->code[0] = o->message[0] = '\0';
}

static void set_code(oo_outcome *o, const oo_envelope *env) {
    const char *c = env->nerrors > 0 ? env->errors[0].code : NULL;
    if (c) snprintf(o->code, sizeof o->code, "%s", c);
}

static int status_is(const char *s, const char *word) { return s && strcasecmp(s, word) == 0; }

void oo_classify_response(int status, const char *retry_after, const char *body, size_t len,
                          double now, oo_outcome *o, oo_envelope *env) {
    oo_envelope local;
    char head[64];
    if (!env) env = &local;
    reset(o);
    o->status = status;
    oo_json_envelope(body ? body : "", body ? len : 0, env);
    set_code(o, env);
    if (status >= 200 && status < 300) {
        if (env->object && status_is(env->status, "fail")) {
            o->stop = oo_code_is_credentials(o->code);
            o->kind = o->stop ? "auth" : "api";
            say(o, o->stop ? "credentials refused: order rejected" : "order rejected");
            if (env->nerrors) describe(o, env);
            else say(o, ": status fail");
            return;
        }
        o->ok = 1;
        /* "OK" without warnings is the common case; anything else in an
         * envelope (warnings, errors, an odd status) is worth reading */
        o->warned = env->object &&
                    (!status_is(env->status, "ok") || env->nwarnings > 0 || env->nerrors > 0);
        return;
    }
    o->retry_after = oo_retry_after(retry_after, now);
    o->throttled = status == 429;
    o->stop = status == 401 || status == 403 || oo_code_is_credentials(o->code);
    o->retryable = !o->stop && oo_status_retryable(status);
    o->kind = o->stop ? "auth" : "http";
    snprintf(head, sizeof head, "%sserver answered HTTP %d", o->stop ? "credentials refused: " : "",
             status);
    say(o, head);
    describe(o, env);
}

void oo_classify_broken(const char *what, oo_outcome *o) {
    reset(o);
    o->kind = "transport";
    say(o, "the transport broke its contract: ");
    say(o, what);
    say(o, " (expected status, body, info or nil, kind, message)");
}

void oo_classify_failure(const char *kind, const char *message, oo_outcome *o) {
    reset(o);
    if (kind && strcmp(kind, "transport") == 0) {
        oo_classify_broken(message && message[0] ? message : "no answer", o);
        return;
    }
    if (kind && strcmp(kind, "timeout") == 0) o->kind = "timeout";
    else if (kind && strcmp(kind, "tls") == 0) o->kind = "tls";
    else o->kind = "network";
    o->retryable = strcmp(o->kind, "tls") != 0; /* a bad certificate does not fix itself */
    say(o, message && message[0] ? message : "transport failure");
}

/* ------------------------------------------------------------------ */
/* Retry-After                                                         */

static int month_of(const char *s) {
    static const char names[] = "janfebmaraprmayjunjulaugsepoctnovdec";
    int i;
    for (i = 0; i < 12; i++)
        if (strncasecmp(s, names + 3 * i, 3) == 0) return i + 1;
    return 0;
}

/* n digits at *p into *v (exactly n, or 1..n when `upto`). */
static int digits(const char **p, int n, int upto, int *v) {
    int k = 0;
    *v = 0;
    while (k < n && (*p)[k] >= '0' && (*p)[k] <= '9') {
        *v = *v * 10 + ((*p)[k] - '0');
        k++;
    }
    if (k == 0 || (!upto && k != n)) return 0;
    *p += k;
    return 1;
}

static int lit(const char **p, const char *s) {
    size_t n = strlen(s);
    if (strncmp(*p, s, n) != 0) return 0;
    *p += n;
    return 1;
}

static int alpha_run(const char **p, int min, int max) {
    int k = 0;
    while (((*p)[k] >= 'a' && (*p)[k] <= 'z') || ((*p)[k] >= 'A' && (*p)[k] <= 'Z')) k++;
    if (k < min || k > max) return 0;
    *p += k;
    return 1;
}

static double epoch(int y, int mon, int d, int hh, int mm, int ss) {
    if (!mon || d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60) return -1;
    return (double)(oo_days_from_civil(y, (unsigned)mon, (unsigned)d) * 86400 + hh * 3600 +
                    mm * 60 + ss);
}

static int hms(const char **p, int *hh, int *mm, int *ss) {
    return digits(p, 2, 0, hh) && lit(p, ":") && digits(p, 2, 0, mm) && lit(p, ":") &&
           digits(p, 2, 0, ss);
}

double oo_http_date(const char *s) {
    const char *p = s;
    int d, y, hh, mm, ss, mon;
    if (!s) return -1;
    /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
    if (alpha_run(&p, 3, 3) && lit(&p, ", ") && digits(&p, 2, 1, &d) && lit(&p, " ") &&
        (mon = month_of(p)) && alpha_run(&p, 3, 3) && lit(&p, " ") && digits(&p, 4, 0, &y) &&
        lit(&p, " ") && hms(&p, &hh, &mm, &ss) && lit(&p, " GMT") && !*p)
        return epoch(y, mon, d, hh, mm, ss);
    /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
    p = s;
    if (alpha_run(&p, 6, 9) && lit(&p, ", ") && digits(&p, 2, 0, &d) && lit(&p, "-") &&
        (mon = month_of(p)) && alpha_run(&p, 3, 3) && lit(&p, "-") && digits(&p, 2, 0, &y) &&
        lit(&p, " ") && hms(&p, &hh, &mm, &ss) && lit(&p, " GMT") && !*p)
        return epoch(y < 70 ? 2000 + y : 1900 + y, mon, d, hh, mm, ss);
    /* asctime: Sun Nov  6 08:49:37 1994 */
    p = s;
    if (alpha_run(&p, 3, 3) && lit(&p, " ") && (mon = month_of(p)) && alpha_run(&p, 3, 3) &&
        lit(&p, " ")) {
        while (*p == ' ') p++;
        if (digits(&p, 2, 1, &d) && lit(&p, " ") && hms(&p, &hh, &mm, &ss) && lit(&p, " ") &&
            digits(&p, 4, 0, &y) && !*p)
            return epoch(y, mon, d, hh, mm, ss);
    }
    return -1;
}

double oo_retry_after(const char *value, double now) {
    char buf[64];
    const char *a, *b;
    size_t n;
    if (!value) return -1;
    for (a = value; *a == ' ' || *a == '\t'; a++) {}
    for (b = a + strlen(a); b > a && (b[-1] == ' ' || b[-1] == '\t'); b--) {}
    n = (size_t)(b - a);
    if (n == 0 || n >= sizeof buf) return -1;
    memcpy(buf, a, n);
    buf[n] = '\0';
    if (strspn(buf, "0123456789") == n) {
        /* delay-seconds; ten digits or more is "a very long time" */
        return n >= 10 ? 1e10 : strtod(buf, NULL);
    }
    {
        double t = oo_http_date(buf);
        if (t < 0) return -1;
        return t > now ? t - now : 0;
    }
}

/* ------------------------------------------------------------------ */
/* Lua                                                                 */

/* Pushes the outcome as a table {ok, kind, status, code, message,
 * retryable, retry_after, stop, warned} (absent/false fields left out). */
void oo_push_outcome(lua_State *L, const oo_outcome *o) {
    lua_createtable(L, 0, 8);
    oo_outcome_fields(L, o);
}

void oo_outcome_fields(lua_State *L, const oo_outcome *o) {
    oo_set_bool(L, "ok", o->ok);
    if (o->status) oo_set_int(L, "status", o->status);
    if (o->ok) {
        if (o->warned) oo_set_bool(L, "warned", 1);
        return;
    }
    oo_set_str(L, "kind", o->kind);
    oo_set_str(L, "message", o->message);
    oo_set_bool(L, "retryable", o->retryable);
    if (o->code[0]) oo_set_str(L, "code", o->code);
    if (o->retry_after >= 0) oo_set_num(L, "retry_after", o->retry_after);
    if (o->stop) oo_set_bool(L, "stop", 1);
    if (o->throttled) oo_set_bool(L, "throttled", 1);
    if (o->transport_code) oo_set_int(L, "curl_code", o->transport_code);
}

/*** core.classify(status, body [, retry_after [, now]]) -> record */
static int l_classify(lua_State *L) {
    oo_outcome o;
    size_t len = 0;
    lua_Integer status = luaL_checkinteger(L, 1);
    const char *body = luaL_optlstring(L, 2, "", &len);
    const char *ra = luaL_optstring(L, 3, NULL);
    double now = (double)luaL_optnumber(L, 4, 0);
    luaL_argcheck(L, status >= 100 && status <= 999, 1, "HTTP status must be 100..999");
    oo_classify_response((int)status, ra, body, len, now > 0 ? now : oo_wall_now(), &o, NULL);
    oo_push_outcome(L, &o);
    return 1;
}

/*** core.classify_failure(kind, message) -> record */
static int l_classify_failure(lua_State *L) {
    oo_outcome o;
    oo_classify_failure(luaL_optstring(L, 1, "network"), luaL_optstring(L, 2, NULL), &o);
    oo_push_outcome(L, &o);
    return 1;
}

static void set_opt_string(lua_State *L, const char *k, const char *v) {
    if (v) oo_set_str(L, k, v);
}

/*** core.envelope(body) -> {status, errors = {{code, message}...},
 * warnings = {"..."}, nerrors, nwarnings} or nil when the body is not a
 * JSON object. Only the first 16 errors/warnings are listed. */
static int l_envelope(lua_State *L) {
    size_t len;
    const char *body = luaL_checklstring(L, 1, &len);
    oo_envelope *env =
        (oo_envelope *)lua_newuserdata(L, sizeof *env); /* 4 KiB: not on the C stack */
    int i, n;
    if (!oo_json_envelope(body, len, env)) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, 0, 5);
    set_opt_string(L, "status", env->status);
    if (env->status_present && !env->status) oo_set_bool(L, "status_not_string", 1);
    n = env->nerrors < OO_ENV_ITEMS ? env->nerrors : OO_ENV_ITEMS;
    lua_createtable(L, n, 0);
    for (i = 0; i < n; i++) {
        lua_createtable(L, 0, 2);
        set_opt_string(L, "code", env->errors[i].code);
        set_opt_string(L, "message", env->errors[i].message);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "errors");
    n = env->nwarnings < OO_ENV_ITEMS ? env->nwarnings : OO_ENV_ITEMS;
    lua_createtable(L, n, 0);
    for (i = 0; i < n; i++) {
        if (env->warnings[i]) {
            lua_pushstring(L, env->warnings[i]);
            lua_rawseti(L, -2, (int)oo_rawlen(L, -2) + 1);
        }
    }
    lua_setfield(L, -2, "warnings");
    oo_set_int(L, "nerrors", env->nerrors);
    oo_set_int(L, "nwarnings", env->nwarnings);
    return 1;
}

/*** core.parse_retry_after(value [, now]) -> seconds | nil */
static int l_parse_retry_after(lua_State *L) {
    double v = oo_retry_after(luaL_optstring(L, 1, NULL),
                              (double)luaL_optnumber(L, 2, (double)time(NULL)));
    if (v < 0) lua_pushnil(L);
    else lua_pushnumber(L, v);
    return 1;
}

/*** core.parse_http_date(s) -> epoch seconds | nil */
static int l_parse_http_date(lua_State *L) {
    double v = oo_http_date(luaL_optstring(L, 1, NULL));
    if (v < 0) lua_pushnil(L);
    else lua_pushnumber(L, v);
    return 1;
}

void oo_classify_register(lua_State *L) {
    static const luaL_Reg funcs[] = {{"classify", l_classify},
                                     {"classify_failure", l_classify_failure},
                                     {"envelope", l_envelope},
                                     {"parse_retry_after", l_parse_retry_after},
                                     {"parse_http_date", l_parse_http_date},
                                     {NULL, NULL}};
    oo_setfuncs(L, funcs, 0);
}
