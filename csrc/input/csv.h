/* CSV input, the C half of optimizely.offline.input.csv.
 *
 * Three parts, each usable alone (the fuzz target drives them directly):
 *  - the tokenizer (oo_csv_tok): a byte stream to rows of fields, RFC 4180
 *    plus this project's strictness (text after a closing quote, a stray
 *    quote, a NUL byte, an unterminated quote are row errors);
 *  - the seen set (oo_csv_seen, csv_store.c): "did a refCode already start an
 *    order?" in bounded memory (a fixed-size filter, a recent exact set, and
 *    older refCodes in a temporary SQLite database);
 *  - the spill (oo_csv_spill, csv_store.c): every row kept in a temporary
 *    SQLite database and read back grouped by refCode.
 * The reader object that groups rows into orders and builds payload tables
 * lives in csv_reader.c (core.csv_reader, see its comment); these parts need
 * no Lua. */
#ifndef OO_CSV_H
#define OO_CSV_H

#include <stddef.h>

/* oo_csv_next_row results */
#define OO_CSV_ROW 1        /* a row is in tok->f / tok->count */
#define OO_CSV_NEED 0       /* feed more input (or mark the end) first */
#define OO_CSV_END (-1)     /* no more rows */
#define OO_CSV_TOOLONG (-2) /* the row outgrew max_record: the stream ends */

/* Row errors (the first one found wins, except an unterminated quote). */
#define OO_CSV_E_NONE 0
#define OO_CSV_E_AFTER_QUOTE 1  /* err_field: text after its closing quote */
#define OO_CSV_E_STRAY_QUOTE 2  /* err_field: a quote inside an unquoted field */
#define OO_CSV_E_NUL 3          /* err_field: a NUL byte */
#define OO_CSV_E_UNTERMINATED 4 /* err_line: where the quote opened */

typedef struct {
    const char *p;
    size_t n;
} oo_csv_field;

typedef struct {
    /* input: the unread text is buf[pos..len) */
    char *buf;
    size_t len, cap, pos;
    size_t dropped; /* bytes consumed before buf[0] (BOM included) */
    int eof, started;
    unsigned char delim;
    unsigned char cls[256]; /* byte classes of an unquoted field */
    size_t max_record;
    long long line; /* the line the next row starts on */
    /* the row just returned (valid until the next feed) */
    oo_csv_field *f;
    int nf, capf, maxf; /* fields stored: at most maxf (0: no limit) */
    int count;          /* fields in the row, stored or not */
    int nonempty;       /* some field is not empty */
    char *text;         /* unescaped quoted fields ("" -> ") */
    size_t textcap, textlen;
    size_t raw_at;  /* where the row starts in buf */
    size_t raw_len; /* its bytes without the line break (shown in messages) */
    size_t row_len; /* all the bytes it took, line break included (replayed) */
    long long row_line;
    int err, err_field;
    long long err_line;
    int in_quote; /* when NEED/TOOLONG: the row ends inside a quote */
    int oom;
} oo_csv_tok;

void oo_csv_tok_init(oo_csv_tok *t, unsigned char delim, size_t max_record);
void oo_csv_tok_free(oo_csv_tok *t);
/* Appends input; returns 0 when memory runs out. */
int oo_csv_feed(oo_csv_tok *t, const char *s, size_t n);
/* Replaces the input with one row's text (the spill replays rows so). */
int oo_csv_replay(oo_csv_tok *t, const char *s, size_t n, long long line);
int oo_csv_next_row(oo_csv_tok *t);
/* The message for the row's error, without a "line N:" prefix. */
const char *oo_csv_error_text(const oo_csv_tok *t, char *out, size_t size);
/* Bytes of input consumed so far (for a progress display). */
size_t oo_csv_tell(const oo_csv_tok *t);

/* ------------------------------------------------------------ the stores */
typedef struct oo_csv_seen oo_csv_seen;
typedef struct {
    size_t filter_max;              /* the most the filter may take (bytes) */
    unsigned long long total_bytes; /* the input's size, 0 when unknown (the
                                       filter then takes filter_max) */
    size_t exact_max;               /* refCodes kept exactly in memory (>= 16) */
} oo_csv_seen_config;
#define OO_CSV_EXACT_DEFAULT (1u << 18)
oo_csv_seen *oo_csv_seen_new(const oo_csv_seen_config *cfg);
/* How many input bytes have been read (sizes the filter when it is made). */
void oo_csv_seen_read(oo_csv_seen *s, unsigned long long bytes);
void oo_csv_seen_free(oo_csv_seen *s);
/* Brings what oo_csv_seen_add(ref) will read into the cache, ahead. */
void oo_csv_seen_prefetch(oo_csv_seen *s, const char *ref, size_t n);
/* Records that `ref` starts an order on `line`. Returns 0 when it never did
 * before, the line where it first did, or -1 with *err set (storage). */
long long oo_csv_seen_add(oo_csv_seen *s, const char *ref, size_t n, long long line,
                          const char **err);

typedef struct oo_csv_spill oo_csv_spill;
oo_csv_spill *oo_csv_spill_new(const oo_csv_seen_config *cfg, const char **err);
void oo_csv_spill_read(oo_csv_spill *s, unsigned long long bytes);
void oo_csv_spill_free(oo_csv_spill *s);
/* Keeps a row: `ref` groups it (NULL/0: a row of its own). 0 on failure. */
int oo_csv_spill_add(oo_csv_spill *s, const char *ref, size_t n, long long line, const char *raw,
                     size_t raw_len, const char **err);
/* Reads the rows back, grouped by refCode in order of first appearance and
 * in file order inside a group. Returns 1 with a row, 0 at the end, -1 on
 * failure (*err set). The row's text stays valid until the next call. */
int oo_csv_spill_next(oo_csv_spill *s, long long *line, const char **raw, size_t *raw_len,
                      const char **err);

#endif
