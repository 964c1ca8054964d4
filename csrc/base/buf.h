/* A growable byte buffer. Growth failure is reported (oom flag), never
 * aborts: the caller turns it into a Lua error after cleaning up. */
#ifndef OO_BUF_H
#define OO_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct oo_buf {
    char *data;
    size_t len;
    size_t cap;
    int oom;
    char stack[512]; /* small payloads never touch the heap */
} oo_buf;

void oo_buf_init(oo_buf *b);
void oo_buf_free(oo_buf *b);
int oo_buf_grow(oo_buf *b, size_t extra);

static inline int oo_buf_reserve(oo_buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 1;
    return oo_buf_grow(b, extra);
}

static inline void oo_buf_add(oo_buf *b, const char *s, size_t n) {
    if (!oo_buf_reserve(b, n)) return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static inline void oo_buf_addc(oo_buf *b, char c) {
    if (!oo_buf_reserve(b, 1)) return;
    b->data[b->len++] = c;
}

#define oo_buf_addlit(b, lit) oo_buf_add((b), (lit), sizeof(lit) - 1)

/* Appends the decimal form of v. */
void oo_buf_addint(oo_buf *b, long long v);

#endif
