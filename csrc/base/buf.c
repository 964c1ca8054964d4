#include "buf.h"

#include <stdlib.h>

void oo_buf_init(oo_buf *b) {
    b->data = b->stack;
    b->len = 0;
    b->cap = sizeof(b->stack);
    b->oom = 0;
}

void oo_buf_free(oo_buf *b) {
    if (b->data != b->stack) free(b->data);
    b->data = b->stack;
    b->len = 0;
    b->cap = sizeof(b->stack);
}

int oo_buf_grow(oo_buf *b, size_t extra) {
    size_t need, cap;
    char *p;
    if (b->oom) return 0;
    need = b->len + extra;
    if (need < b->len) {
        b->oom = 1;
        return 0;
    }
    cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > ((size_t)-1) / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    if (b->data == b->stack) {
        p = malloc(cap);
        if (p) memcpy(p, b->stack, b->len);
    } else {
        p = realloc(b->data, cap);
    }
    if (!p) {
        b->oom = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

void oo_buf_addint(oo_buf *b, long long v) {
    char tmp[24];
    int i = sizeof(tmp);
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + (u % 10));
        u /= 10;
    } while (u);
    if (v < 0) tmp[--i] = '-';
    oo_buf_add(b, tmp + i, sizeof(tmp) - i);
}
