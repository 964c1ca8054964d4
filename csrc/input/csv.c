/* The CSV tokenizer (see csv.h): a byte stream to rows of fields.
 * RFC 4180, plus: a field is quoted only when its first byte is a quote;
 * text after a closing quote, a quote inside an unquoted field and a NUL byte
 * are row errors (the row is still returned, so the reader can say which
 * order it spoils); a CR is dropped only before a line break or the end.
 * Fields point into the input buffer, or into `text` for quoted fields whose
 * doubled quotes had to be collapsed: no copy on the common path. A row that
 * does not fit the buffer returns NEED and is parsed again from its start
 * once more input is there (the reader asks for reads that double in size). */
#include "csv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* =========================================================== tokenizer */

/* Byte classes inside an unquoted field. */
#define C_PLAIN 0
#define C_DELIM 1
#define C_LF 2
#define C_QUOTE 3
#define C_NUL 4

void oo_csv_tok_init(oo_csv_tok *t, unsigned char delim, size_t max_record) {
    memset(t, 0, sizeof *t);
    t->delim = delim;
    t->max_record = max_record;
    t->line = 1;
    t->cls[delim] = C_DELIM;
    t->cls['\n'] = C_LF;
    t->cls['"'] = C_QUOTE;
    t->cls[0] = C_NUL;
}

void oo_csv_tok_free(oo_csv_tok *t) {
    free(t->buf);
    free(t->f);
    free(t->text);
    t->buf = t->text = NULL;
    t->f = NULL;
}

static int reserve(char **p, size_t *cap, size_t want) {
    size_t n;
    char *q;
    if (want <= *cap) return 1;
    n = *cap ? *cap : 4096;
    while (n < want) n *= 2;
    q = realloc(*p, n);
    if (!q) return 0;
    *p = q;
    *cap = n;
    return 1;
}

int oo_csv_feed(oo_csv_tok *t, const char *s, size_t n) {
    if (t->pos > 0) { /* drop what was read: rows never point back there */
        memmove(t->buf, t->buf + t->pos, t->len - t->pos);
        t->dropped += t->pos;
        t->len -= t->pos;
        t->pos = 0;
    }
    if (!reserve(&t->buf, &t->cap, t->len + n + 1)) return 0;
    if (n) memcpy(t->buf + t->len, s, n);
    t->len += n;
    /* unescaped text is never longer than the unread input */
    if (!reserve(&t->text, &t->textcap, t->len + 1)) return 0;
    return 1;
}

int oo_csv_replay(oo_csv_tok *t, const char *s, size_t n, long long line) {
    t->pos = t->len = 0;
    if (!oo_csv_feed(t, s, n)) return 0;
    t->eof = t->started = 1;
    t->line = line;
    return 1;
}

size_t oo_csv_tell(const oo_csv_tok *t) { return t->dropped + t->pos; }

static void set_err(oo_csv_tok *t, int err, int field) {
    if (t->err == OO_CSV_E_NONE) {
        t->err = err;
        t->err_field = field;
    }
}

static int add_field(oo_csv_tok *t, const char *p, size_t n) {
    t->count++;
    if (n) t->nonempty = 1;
    if (t->maxf && t->nf >= t->maxf) return 1; /* counted, not kept */
    if (t->nf == t->capf) {
        int cap = t->capf ? t->capf * 2 : 16;
        oo_csv_field *f = realloc(t->f, (size_t)cap * sizeof *f);
        if (!f) {
            t->oom = 1;
            return 0;
        }
        t->f = f;
        t->capf = cap;
    }
    t->f[t->nf].p = p;
    t->f[t->nf].n = n;
    t->nf++;
    return 1;
}

/* Parses one quoted field whose opening quote is at *pp. Returns 1 with the
 * field added and *pp after the closing quote, 0 when the input ends first
 * (NEED, or at EOF an unterminated quote: *pp = end), -1 on OOM. */
static int quoted_field(oo_csv_tok *t, const char **pp, const char *end, int *nl) {
    const char *open = *pp, *q = open + 1, *seg = q;
    char *out = NULL; /* set once a "" forces unescaping */
    size_t outlen = 0;
    int opened_nl = *nl;
    for (;;) {
        while (q < end && *q != '"' && *q != '\n' && *q != '\0') q++;
        if (q == end) {
            if (!t->eof) return 0;
            t->err = OO_CSV_E_UNTERMINATED; /* overrides any earlier error */
            t->err_line = t->row_line + opened_nl;
            *pp = end;
            return 0;
        }
        if (*q == '\n') {
            (*nl)++;
            q++;
            continue;
        }
        if (*q == '\0') {
            set_err(t, OO_CSV_E_NUL, t->count + 1);
            q++;
            continue;
        }
        /* a quote: doubled, or the closing one */
        if (q + 1 == end && !t->eof) return 0;
        if (q + 1 < end && q[1] == '"') {
            if (!out) out = t->text + t->textlen;
            memcpy(out + outlen, seg, (size_t)(q + 1 - seg));
            outlen += (size_t)(q + 1 - seg);
            q += 2;
            seg = q;
            continue;
        }
        break;
    }
    if (out) {
        memcpy(out + outlen, seg, (size_t)(q - seg));
        outlen += (size_t)(q - seg);
        t->textlen += outlen;
        if (!add_field(t, out, outlen)) return -1;
    } else if (!add_field(t, open + 1, (size_t)(q - open - 1))) {
        return -1;
    }
    *pp = q + 1;
    return 1;
}

/* Parses the row at pos. OO_CSV_ROW or OO_CSV_NEED. */
static int parse_row(oo_csv_tok *t) {
    const char *s = t->buf + t->pos, *end = t->buf + t->len, *p = s, *row_end;
    const unsigned char *cls = t->cls;
    const char delim = (char)t->delim;
    int nl = 0;
    t->nf = t->count = t->nonempty = 0;
    t->textlen = 0;
    t->err = OO_CSV_E_NONE;
    t->err_field = 0;
    t->err_line = 0;
    t->in_quote = 0;
    t->row_line = t->line;
    for (;;) {
        if (p < end && *p == '"') {
            int r = quoted_field(t, &p, end, &nl);
            if (r < 0) return OO_CSV_NEED;
            if (r == 0) {
                if (!t->eof) {
                    t->in_quote = 1;
                    return OO_CSV_NEED;
                }
                row_end = p; /* unterminated: the row runs to the end */
                break;
            }
            /* after the closing quote: a delimiter, a line break or the end */
            if (p == end) {
                if (!t->eof) return OO_CSV_NEED;
                row_end = p;
                break;
            }
            if (*p == delim) {
                p++;
                continue;
            }
            if (*p == '\n') {
                row_end = p++;
                nl++;
                break;
            }
            if (*p == '\r') {
                if (p + 1 == end) {
                    if (!t->eof) return OO_CSV_NEED;
                    row_end = p++;
                    break;
                }
                if (p[1] == '\n') {
                    row_end = p;
                    p += 2;
                    nl++;
                    break;
                }
            }
            set_err(t, OO_CSV_E_AFTER_QUOTE, t->count);
            while (p < end && *p != delim && *p != '\n') p++;
            if (p == end) {
                if (!t->eof) return OO_CSV_NEED;
                row_end = p;
                break;
            }
            if (*p == '\n') {
                row_end = p++;
                nl++;
                break;
            }
            p++;
            continue;
        } else {
            const char *q = p, *fe;
            for (;;) {
                while (q < end && cls[(unsigned char)*q] == C_PLAIN) q++;
                if (q < end && cls[(unsigned char)*q] >= C_QUOTE) {
                    set_err(t, *q == '"' ? OO_CSV_E_STRAY_QUOTE : OO_CSV_E_NUL, t->count + 1);
                    q++;
                    continue;
                }
                break;
            }
            if (q == end && !t->eof) return OO_CSV_NEED;
            fe = q;
            if ((q == end || *q == '\n') && fe > p && fe[-1] == '\r') fe--;
            if (!add_field(t, p, (size_t)(fe - p))) return OO_CSV_NEED;
            if (q == end) {
                row_end = fe;
                p = q;
                break;
            }
            if (*q == delim) {
                p = q + 1;
                continue;
            }
            row_end = fe; /* '\n' */
            p = q + 1;
            nl++;
            break;
        }
    }
    t->raw_at = t->pos;
    t->raw_len = (size_t)(row_end - s);
    t->row_len = (size_t)(p - s);
    t->pos = (size_t)(p - t->buf);
    t->line += nl;
    return OO_CSV_ROW;
}

int oo_csv_next_row(oo_csv_tok *t) {
    int r;
    if (!t->started) {
        if (t->len - t->pos < 3 && !t->eof) return OO_CSV_NEED;
        t->started = 1;
        if (t->len - t->pos >= 3 && memcmp(t->buf + t->pos, "\xEF\xBB\xBF", 3) == 0) t->pos += 3;
    }
    if (t->pos >= t->len) return t->eof ? OO_CSV_END : OO_CSV_NEED;
    r = parse_row(t);
    if (t->oom) return OO_CSV_NEED;
    if (r == OO_CSV_NEED && t->len - t->pos >= t->max_record) return OO_CSV_TOOLONG;
    return r;
}

const char *oo_csv_error_text(const oo_csv_tok *t, char *out, size_t size) {
    switch (t->err) {
    case OO_CSV_E_AFTER_QUOTE:
        snprintf(out, size, "text after the closing quote of field %d", t->err_field);
        break;
    case OO_CSV_E_STRAY_QUOTE:
        snprintf(out, size,
                 "stray quote in unquoted field %d (quote the whole field and double inner quotes)",
                 t->err_field);
        break;
    case OO_CSV_E_NUL:
        snprintf(out, size, "NUL byte in field %d (a binary or UTF-16 file? save it as UTF-8 CSV)",
                 t->err_field);
        break;
    case OO_CSV_E_UNTERMINATED:
        snprintf(out, size,
                 "unterminated quoted field (the quote opened on line %lld is never closed)",
                 t->err_line);
        break;
    default: return NULL;
    }
    return out;
}
