/* Input files as UTF-8 text: a till's Windows-1252 or Latin-1 export
 * converted with iconv, a UTF-8 one checked; both handed on in whole
 * lines, so a reader never sees part of a line it cannot finish. */
#ifndef OO_DECODE_H
#define OO_DECODE_H

#include <stddef.h>

#include "buf.h"

enum { OO_DEC_UTF8, OO_DEC_CP1252, OO_DEC_LATIN1 };

/* Why a decoder stopped. */
enum {
    OO_DEC_INVALID = 1, /* a byte that is not text in the encoding (UTF-8: a bad sequence) */
    OO_DEC_BOM,         /* a single-byte encoding was asked of a file with a UTF-8 BOM */
    OO_DEC_TRUNCATED,   /* the input ends inside a UTF-8 character */
    OO_DEC_UTF16        /* the input starts with a UTF-16 byte order mark */
};

/* Longest piece held back waiting for its line's end: a longer line is
 * handed on in pieces (each cut between characters). */
#define OO_DEC_MAX_CARRY (1u << 20)

typedef struct oo_decoder oo_decoder;

/* The encoding a name means (case-insensitive: utf-8, utf8, cp1252,
 * windows-1252, latin1, latin-1, iso-8859-1), or -1. */
int oo_decoder_kind(const char *name);

/* A decoder, or NULL (out of memory, or iconv cannot convert). */
oo_decoder *oo_decoder_new(int kind);
void oo_decoder_free(oo_decoder *d);

/* Feeds n bytes (`end`: none follow) and appends to `out` the UTF-8 text
 * of the whole lines they complete (at the end, the rest). Returns 0; 1
 * when the decoder stopped: `out` got every line before the one at fault,
 * and oo_decoder_stop tells where and why (every later call returns 1 and
 * adds nothing); -1 when out of memory. */
int oo_decoder_feed(oo_decoder *d, const char *s, size_t n, int end, oo_buf *out);

/* Where and why it stopped: the 1-based line, the byte at fault (-1 for a
 * BOM or a truncated character) and the reason (OO_DEC_*); 0 when it has
 * not stopped. */
int oo_decoder_stop(const oo_decoder *d, long long *line, int *byte);

/* Lines handed on so far. */
long long oo_decoder_lines(const oo_decoder *d);

#endif
