/* Bounded-memory stores of the CSV reader (see csv.h).
 *
 * The seen set maps a refCode to the value it was first added with (a line,
 * or a group number). Memory stays fixed however long the file:
 *  - the most recent refCodes (up to exact_max, or PENDING_BYTES of text)
 *    sit in an exact hash table;
 *  - once refCodes leave that table, a blocked Bloom filter (8 bits set in
 *    one 64-byte block) answers "never seen" for almost every new refCode
 *    without touching disk. It is made then, sized for ~24 bits a refCode of
 *    the whole input (estimated from the bytes read per refCode so far; at
 *    most filter_max): a filter bigger than needed costs a TLB miss a lookup;
 *  - when that fills, its entries are sorted by hash and appended to a
 *    temporary SQLite database as one "run" of packed blocks (~4 KiB each;
 *    one SQLite row per block, so the per-refCode cost is a memcpy, not an
 *    INSERT). The first hash of every block stays in memory, so a lookup
 *    reads one block per run. Runs are merged FANOUT at a time (a k-way merge
 *    of sorted blocks), so a lookup probes O(log n) runs. Big first runs and
 *    a wide merge keep the writes near one copy of each refCode (the disk's
 *    share of a long file's time was the temporary database's writes).
 * A filter hit is confirmed exactly: the hash table, then the runs, comparing
 * the refCode's bytes. The database is SQLite's private temporary file
 * (created 0600, unlinked at once, gone when closed).
 *
 * The spill keeps every row of a grouped read in another temporary database
 * and reads it back ordered by (group, row): a group is the row number where
 * its refCode first appeared, found through a seen set. */
#include "csv.h"

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PENDING_BYTES (8u << 20) /* ... or this much refCode text */
#define SLOTS_MIN 1024           /* open addressing, load <= 1/2: the table */
                                 /* doubles up to 2 * exact_max slots */
#define BLOCK_BYTES 4096
#define FANOUT 16 /* runs merged at a time */

typedef struct {
    uint64_t h;
    uint32_t off, len; /* in the pending arena */
    long long value;
} pending_entry;

typedef struct {
    int level;
    long long first_id; /* block rowids first_id .. first_id + nblocks - 1 */
    size_t nblocks;
    uint64_t *fence; /* first hash of each block */
} run;

struct oo_csv_seen {
    uint64_t *filter; /* NULL until the first refCodes leave the exact table */
    size_t filter_bytes;
    size_t filter_mask; /* blocks - 1 (a block is 8 words) */
    size_t filter_max;
    size_t exact_max;               /* refCodes in the exact table before a flush */
    unsigned long long total, read; /* input bytes (0: unknown), and read so far */
    unsigned long long added;       /* refCodes added */
    /* the exact table of recent refCodes */
    uint32_t *slot;       /* entry index + 1; 0 = empty */
    size_t nslots;        /* a power of two */
    pending_entry *entry; /* nslots / 2 of them */
    size_t nentry;
    char *arena;
    size_t arena_len, arena_cap;
    /* older refCodes */
    sqlite3 *db;
    sqlite3_stmt *put, *get, *drop;
    run *runs;
    size_t nruns, capruns;
    char errmsg[160];
};

/* ------------------------------------------------------------- hashing */

static uint64_t hash64(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a, then a finaliser */
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Sets the refCode's 8 bits; 1 when they all were set already (maybe seen).
 * The block comes from the hash's top 24 bits, the bits inside it from
 * 9-bit windows of the low 36 bits and of a second mix. */
static int filter_test_set(oo_csv_seen *s, uint64_t h) {
    uint64_t *b = s->filter + ((h >> 40) & s->filter_mask) * 8;
    uint64_t g = (h ^ (h >> 31)) * 0x9E3779B97F4A7C15ULL;
    int i, all = 1;
    for (i = 0; i < 8; i++) {
        unsigned bit = (unsigned)(i < 4 ? h >> (9 * i) : g >> (9 * i - 16)) & 511u;
        uint64_t m = 1ULL << (bit & 63);
        if (!(b[bit >> 6] & m)) {
            all = 0;
            b[bit >> 6] |= m;
        }
    }
    return all;
}

/* --------------------------------------------------------- the database */

static long long fail(oo_csv_seen *s, const char *what, const char **err) {
    snprintf(s->errmsg, sizeof s->errmsg, "%s: %s", what,
             s->db ? sqlite3_errmsg(s->db) : "no database");
    *err = s->errmsg;
    return -1;
}

/* SQLite's private temporary database: "" opens one that is created 0600,
 * unlinked as soon as it exists, and kept in memory while it is small. */
static sqlite3 *open_temp(int cache_kib) {
    sqlite3 *db = NULL;
    char sql[160];
    if (sqlite3_open_v2("", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=FILE;"
             "PRAGMA locking_mode=EXCLUSIVE; PRAGMA cache_size=-%d;",
             cache_kib);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

static int open_db(oo_csv_seen *s) {
    s->db = open_temp(2048);
    if (!s->db) return 0;
    return sqlite3_exec(s->db, "CREATE TABLE blocks(id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
                        NULL, NULL, NULL) == SQLITE_OK &&
           sqlite3_prepare_v2(s->db, "INSERT INTO blocks(data) VALUES(?1)", -1, &s->put, NULL) ==
               SQLITE_OK &&
           sqlite3_prepare_v2(s->db, "SELECT data FROM blocks WHERE id = ?1", -1, &s->get, NULL) ==
               SQLITE_OK &&
           sqlite3_prepare_v2(s->db, "DELETE FROM blocks WHERE id BETWEEN ?1 AND ?2", -1, &s->drop,
                              NULL) == SQLITE_OK;
}

/* The filter's memory. A big one is mapped (zero pages on first touch):
 * every refCode touches a random block, so large pages (where the kernel
 * gives them) save a TLB miss and a page fault per lookup on big files. */
#define FILTER_MAPPED (1u << 20)
static uint64_t *filter_alloc(size_t bytes) {
    void *p;
    if (bytes < FILTER_MAPPED) return calloc(bytes / 8, 8);
    p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

static void filter_free(uint64_t *f, size_t bytes) {
    if (!f) return;
    if (bytes < FILTER_MAPPED) free(f);
    else munmap(f, bytes);
}

/* Makes the filter and puts the exact table's refCodes in it. */
static int filter_make(oo_csv_seen *s) {
    size_t want = s->filter_max, blocks = 1, i;
    if (s->total && s->read) {
        double refs = (double)s->added * (double)s->total / (double)s->read * 1.25;
        want = 65536;
        while (want < s->filter_max && (double)want * 8 < refs * 24) want *= 2;
        if (want > s->filter_max) want = s->filter_max;
    }
    while (blocks * 2 * 64 <= want) blocks *= 2;
    s->filter_bytes = blocks * 64;
    s->filter_mask = blocks - 1;
    s->filter = filter_alloc(s->filter_bytes);
    if (!s->filter) return 0;
    for (i = 0; i < s->nentry; i++) filter_test_set(s, s->entry[i].h);
    return 1;
}

/* ------------------------------------------------------ blocks and runs */

/* An entry in a block: the hash (8 bytes), the value and the refCode's
 * length (LEB128), the refCode. */
typedef struct {
    uint64_t h;
    unsigned long long value;
    uint32_t n;
    const char *ref;
} entry;

static size_t varint_put(unsigned char *p, unsigned long long v) {
    size_t i = 0;
    while (v >= 0x80) {
        p[i++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[i++] = (unsigned char)v;
    return i;
}

/* Reads a LEB128 number from p[0..end); returns its size, 0 when malformed. */
static size_t varint_get(const unsigned char *p, const unsigned char *end, unsigned long long *v) {
    size_t i = 0;
    int shift = 0;
    *v = 0;
    while (p + i < end && shift < 64) {
        *v |= (unsigned long long)(p[i] & 0x7f) << shift;
        if (!(p[i++] & 0x80)) return i;
        shift += 7;
    }
    return 0;
}

#define ENTRY_MAX_HEAD (8 + 10 + 5)

static size_t entry_put(char *out, const entry *e) {
    unsigned char *p = (unsigned char *)out;
    size_t k;
    memcpy(p, &e->h, 8);
    k = 8 + varint_put(p + 8, e->value);
    k += varint_put(p + k, e->n);
    memcpy(p + k, e->ref, e->n);
    return k + e->n;
}

/* The entry at buf[at..len): returns the offset after it, 0 when malformed. */
static size_t entry_get(const char *buf, size_t len, size_t at, entry *e) {
    const unsigned char *p = (const unsigned char *)buf + at,
                        *end = (const unsigned char *)buf + len;
    unsigned long long n;
    size_t a, b;
    if (at + 8 >= len) return 0;
    memcpy(&e->h, p, 8);
    a = varint_get(p + 8, end, &e->value);
    if (!a) return 0;
    b = varint_get(p + 8 + a, end, &n);
    if (!b || n > (unsigned long long)(end - (p + 8 + a + b))) return 0;
    e->n = (uint32_t)n;
    e->ref = (const char *)p + 8 + a + b;
    return at + 8 + a + b + (size_t)n;
}

/* Builds one run: blocks are appended through put_block, fences kept. */
typedef struct {
    oo_csv_seen *s;
    run r;
    size_t capfence;
    char *buf;
    size_t len, cap;
    uint64_t first;
    int failed;
} run_writer;

static void writer_init(run_writer *w, oo_csv_seen *s, int level) {
    memset(w, 0, sizeof *w);
    w->s = s;
    w->r.level = level;
    w->r.first_id = -1;
}

static int put_block(run_writer *w) {
    oo_csv_seen *s = w->s;
    int rc;
    if (!w->len) return 1;
    if (w->r.nblocks == w->capfence) {
        size_t cap = w->capfence ? w->capfence * 2 : 16;
        uint64_t *f = realloc(w->r.fence, cap * sizeof *f);
        if (!f) return 0;
        w->r.fence = f;
        w->capfence = cap;
    }
    sqlite3_bind_blob(s->put, 1, w->buf, (int)w->len, SQLITE_STATIC);
    rc = sqlite3_step(s->put);
    sqlite3_reset(s->put);
    if (rc != SQLITE_DONE) return 0;
    if (w->r.first_id < 0) w->r.first_id = sqlite3_last_insert_rowid(s->db);
    w->r.fence[w->r.nblocks++] = w->first;
    w->len = 0;
    return 1;
}

static int write_entry(run_writer *w, const entry *e) {
    size_t need = ENTRY_MAX_HEAD + e->n;
    if (w->len && w->len + need > BLOCK_BYTES && !put_block(w)) return 0;
    if (w->len + need > w->cap) {
        size_t cap = w->cap ? w->cap : BLOCK_BYTES;
        char *b;
        while (cap < w->len + need) cap *= 2;
        b = realloc(w->buf, cap);
        if (!b) return 0;
        w->buf = b;
        w->cap = cap;
    }
    if (!w->len) w->first = e->h;
    w->len += entry_put(w->buf + w->len, e);
    return 1;
}

/* Adds the finished run to the list; 0 on failure. */
static int writer_finish(run_writer *w) {
    oo_csv_seen *s = w->s;
    int ok = put_block(w);
    free(w->buf);
    if (ok && s->nruns == s->capruns) {
        size_t cap = s->capruns ? s->capruns * 2 : 8;
        run *r = realloc(s->runs, cap * sizeof *r);
        if (r) {
            s->runs = r;
            s->capruns = cap;
        } else ok = 0;
    }
    if (!ok || !w->r.nblocks) {
        free(w->r.fence);
        return ok;
    }
    s->runs[s->nruns++] = w->r;
    return 1;
}

/* Reads block `id` into *buf (grown as needed); returns its size or -1. */
static long read_block(oo_csv_seen *s, long long id, char **buf, size_t *cap) {
    long n = -1;
    sqlite3_bind_int64(s->get, 1, id);
    if (sqlite3_step(s->get) == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(s->get, 0);
        n = sqlite3_column_bytes(s->get, 0);
        if ((size_t)n > *cap) {
            char *b = realloc(*buf, (size_t)n);
            if (!b) n = -1;
            else {
                *buf = b;
                *cap = (size_t)n;
            }
        }
        if (n > 0) memcpy(*buf, p, (size_t)n);
    }
    sqlite3_reset(s->get);
    return n;
}

typedef struct {
    const run *r;
    size_t block; /* next block to read */
    char *buf;
    size_t cap, len, at;
    entry e; /* the current entry */
    int live;
} cursor;

static int cursor_next(oo_csv_seen *s, cursor *c) {
    if (c->at >= c->len) {
        long n;
        if (c->block == c->r->nblocks) {
            c->live = 0;
            return 1;
        }
        n = read_block(s, c->r->first_id + (long long)c->block++, &c->buf, &c->cap);
        if (n <= 0) return 0;
        c->len = (size_t)n;
        c->at = 0;
    }
    c->at = entry_get(c->buf, c->len, c->at, &c->e);
    c->live = 1;
    return c->at != 0;
}

/* Merges the last `k` runs (all of one level) into one run a level up. */
static int merge_runs(oo_csv_seen *s, size_t k) {
    cursor cur[FANOUT];
    run_writer w;
    size_t i, first = s->nruns - k;
    int ok = 1;
    writer_init(&w, s, s->runs[first].level + 1);
    memset(cur, 0, sizeof cur);
    for (i = 0; i < k; i++) {
        cur[i].r = &s->runs[first + i];
        ok = ok && cursor_next(s, &cur[i]);
    }
    while (ok) {
        cursor *min = NULL;
        for (i = 0; i < k; i++) {
            if (cur[i].live && (!min || cur[i].e.h < min->e.h)) min = &cur[i];
        }
        if (!min) break;
        ok = write_entry(&w, &min->e) && cursor_next(s, min);
    }
    for (i = 0; i < k; i++) free(cur[i].buf);
    if (ok) {
        /* the merged blocks go; their pages are reused by later runs */
        for (i = first; i < s->nruns; i++) {
            const run *r = &s->runs[i];
            sqlite3_bind_int64(s->drop, 1, r->first_id);
            sqlite3_bind_int64(s->drop, 2, r->first_id + (long long)r->nblocks - 1);
            ok = ok && sqlite3_step(s->drop) == SQLITE_DONE;
            sqlite3_reset(s->drop);
        }
    }
    for (i = first; i < s->nruns; i++) free(s->runs[i].fence);
    s->nruns = first;
    return ok && writer_finish(&w);
}

/* The entries' indexes in hash order (a lookup reads every entry of its
 * hash, so ties need no order), or NULL. Hashes are uniform: a counting sort
 * on the top 16 bits leaves buckets of about one entry, finished by
 * insertion sort. Indexes, not entries, are moved: 4 bytes each. */
static uint32_t *sort_by_hash(const pending_entry *e, size_t n) {
    size_t *start = calloc(65537, sizeof *start), i, b;
    uint32_t *out = malloc((n ? n : 1) * sizeof *out);
    if (!start || !out) {
        free(start);
        free(out);
        return NULL;
    }
    for (i = 0; i < n; i++) start[(e[i].h >> 48) + 1]++;
    for (b = 1; b <= 65536; b++) start[b] += start[b - 1];
    for (i = 0; i < n; i++) out[start[e[i].h >> 48]++] = (uint32_t)i; /* start[b]: bucket b's end */
    for (b = 0, i = 0; b < 65536; i = start[b++]) {
        size_t j, k;
        for (j = i + 1; j < start[b]; j++) {
            uint32_t x = out[j];
            for (k = j; k > i && e[out[k - 1]].h > e[x].h; k--) out[k] = out[k - 1];
            out[k] = x;
        }
    }
    free(start);
    return out;
}

/* Moves the exact table into a new run, then merges full levels. */
static int flush_pending(oo_csv_seen *s) {
    run_writer w;
    uint32_t *order;
    size_t i;
    int ok = 1;
    if (!s->filter && !filter_make(s)) return 0;
    if (!s->db && !open_db(s)) return 0;
    order = sort_by_hash(s->entry, s->nentry);
    if (!order) return 0;
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        free(order);
        return 0;
    }
    writer_init(&w, s, 0);
    for (i = 0; ok && i < s->nentry; i++) {
        const pending_entry *p = &s->entry[order[i]];
        entry e;
        e.h = p->h;
        e.value = (unsigned long long)p->value;
        e.n = p->len;
        e.ref = s->arena + p->off;
        ok = write_entry(&w, &e);
    }
    free(order);
    ok = writer_finish(&w) && ok;
    while (ok && s->nruns >= FANOUT &&
           s->runs[s->nruns - 1].level == s->runs[s->nruns - FANOUT].level)
        ok = merge_runs(s, FANOUT);
    if (sqlite3_exec(s->db, ok ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK) ok = 0;
    memset(s->slot, 0, s->nslots * sizeof *s->slot);
    s->nentry = 0;
    s->arena_len = 0;
    return ok;
}

/* The value of ref in run r, 0 when absent, -1 on failure. */
static long long run_find(oo_csv_seen *s, const run *r, uint64_t h, const char *ref, size_t n,
                          char **buf, size_t *cap) {
    size_t lo = 0, hi = r->nblocks, b;
    /* the first block whose fence is >= h; an equal hash may start one earlier */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r->fence[mid] < h) lo = mid + 1;
        else hi = mid;
    }
    for (b = lo ? lo - 1 : 0; b < r->nblocks && (b < lo || r->fence[b] <= h); b++) {
        long len = read_block(s, r->first_id + (long long)b, buf, cap);
        size_t at = 0;
        entry e;
        if (len < 0) return -1;
        while (at < (size_t)len) {
            at = entry_get(*buf, (size_t)len, at, &e);
            if (!at) return -1;
            if (e.h > h) return 0;
            if (e.h == h && e.n == n && memcmp(e.ref, ref, n) == 0) return (long long)e.value;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ the set */

oo_csv_seen *oo_csv_seen_new(const oo_csv_seen_config *cfg) {
    oo_csv_seen *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->filter_max = cfg->filter_max < 64 ? 64 : cfg->filter_max;
    s->total = cfg->total_bytes;
    s->exact_max = cfg->exact_max < 16 ? 16 : cfg->exact_max;
    s->nslots = SLOTS_MIN;
    s->slot = calloc(s->nslots, sizeof *s->slot);
    s->entry = malloc(s->nslots / 2 * sizeof *s->entry);
    if (!s->slot || !s->entry) {
        oo_csv_seen_free(s);
        return NULL;
    }
    return s;
}

void oo_csv_seen_read(oo_csv_seen *s, unsigned long long bytes) { s->read = bytes; }

void oo_csv_seen_free(oo_csv_seen *s) {
    size_t i;
    if (!s) return;
    sqlite3_finalize(s->put);
    sqlite3_finalize(s->get);
    sqlite3_finalize(s->drop);
    sqlite3_close(s->db);
    for (i = 0; i < s->nruns; i++) free(s->runs[i].fence);
    free(s->runs);
    filter_free(s->filter, s->filter_bytes);
    free(s->slot);
    free(s->entry);
    free(s->arena);
    free(s);
}

static uint32_t *pending_slot(oo_csv_seen *s, uint64_t h, const char *ref, size_t n) {
    size_t mask = s->nslots - 1, i = (size_t)h & mask;
    for (;; i = (i + 1) & mask) {
        const pending_entry *e;
        if (!s->slot[i]) return &s->slot[i];
        e = &s->entry[s->slot[i] - 1];
        if (e->h == h && e->len == n && memcmp(s->arena + e->off, ref, n) == 0) return &s->slot[i];
    }
}

/* Doubles the exact table (entries keep their indexes; slots are rebuilt). */
static int pending_grow(oo_csv_seen *s) {
    size_t n = s->nslots * 2, i;
    uint32_t *slot = calloc(n, sizeof *slot);
    pending_entry *entry = realloc(s->entry, n / 2 * sizeof *entry);
    if (!slot || !entry) {
        free(slot);
        if (entry) s->entry = entry;
        return 0;
    }
    for (i = 0; i < s->nentry; i++) {
        size_t j = (size_t)entry[i].h & (n - 1);
        while (slot[j]) j = (j + 1) & (n - 1);
        slot[j] = (uint32_t)i + 1;
    }
    free(s->slot);
    s->slot = slot;
    s->entry = entry;
    s->nslots = n;
    return 1;
}

static int pending_add(oo_csv_seen *s, uint32_t *slot, uint64_t h, const char *ref, size_t n,
                       long long value) {
    pending_entry *e;
    s->added++;
    if (s->arena_len + n > s->arena_cap) {
        size_t cap = s->arena_cap ? s->arena_cap : 65536;
        char *a;
        while (cap < s->arena_len + n) cap *= 2;
        a = realloc(s->arena, cap);
        if (!a) return 0;
        s->arena = a;
        s->arena_cap = cap;
    }
    e = &s->entry[s->nentry];
    e->h = h;
    e->off = (uint32_t)s->arena_len;
    e->len = (uint32_t)n;
    e->value = value;
    memcpy(s->arena + s->arena_len, ref, n);
    s->arena_len += n;
    *slot = (uint32_t)++s->nentry;
    if (s->nentry == s->nslots / 2 && s->nentry < s->exact_max) return pending_grow(s);
    return 1;
}

void oo_csv_seen_prefetch(oo_csv_seen *s, const char *ref, size_t n) {
#if defined(__GNUC__)
    uint64_t h = hash64(ref, n);
    if (s->filter) __builtin_prefetch(s->filter + ((h >> 40) & s->filter_mask) * 8, 1);
    __builtin_prefetch(&s->slot[(size_t)h & (s->nslots - 1)], 0);
#else
    (void)s, (void)ref, (void)n;
#endif
}

long long oo_csv_seen_add(oo_csv_seen *s, const char *ref, size_t n, long long value,
                          const char **err) {
    uint64_t h = hash64(ref, n);
    uint32_t *slot;
    if (n > UINT32_MAX / 2) {
        *err = "refCode too long";
        return -1;
    }
    if (!s->filter || filter_test_set(s, h)) { /* maybe seen: confirm */
        char *buf = NULL;
        size_t cap = 0, i;
        slot = pending_slot(s, h, ref, n);
        if (*slot) return s->entry[*slot - 1].value;
        for (i = s->nruns; i-- > 0;) {
            long long v = run_find(s, &s->runs[i], h, ref, n, &buf, &cap);
            if (v != 0) {
                free(buf);
                return v < 0 ? fail(s, "reading the seen refCodes", err) : v;
            }
        }
        free(buf);
    } else {
        slot = pending_slot(s, h, ref, n);
    }
    if (!pending_add(s, slot, h, ref, n, value)) {
        *err = "out of memory";
        return -1;
    }
    if ((s->nentry >= s->exact_max || s->arena_len >= PENDING_BYTES) && !flush_pending(s))
        return fail(s, "writing the seen refCodes", err);
    return 0;
}

/* ------------------------------------------------------------ the spill */

struct oo_csv_spill {
    sqlite3 *db;
    sqlite3_stmt *put, *get;
    oo_csv_seen *groups;
    long long seq;
    char *last;                /* the previous row's ref and group: rows of one */
    size_t last_len, last_cap; /* order usually come together */
    long long last_grp;
    int reading, ended;
    char errmsg[160];
};

static int spill_fail(oo_csv_spill *s, const char *what, const char **err) {
    snprintf(s->errmsg, sizeof s->errmsg, "%s: %s", what,
             s->db ? sqlite3_errmsg(s->db) : "no database");
    *err = s->errmsg;
    return -1;
}

oo_csv_spill *oo_csv_spill_new(const oo_csv_seen_config *cfg, const char **err) {
    oo_csv_spill *s = calloc(1, sizeof *s);
    if (!s) {
        *err = "out of memory";
        return NULL;
    }
    s->groups = oo_csv_seen_new(cfg);
    s->db = open_temp(8192);
    if (!s->groups || !s->db ||
        sqlite3_exec(s->db,
                     "CREATE TABLE rows(grp INTEGER NOT NULL, line INTEGER NOT NULL, raw BLOB);"
                     "BEGIN",
                     NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "INSERT INTO rows(grp, line, raw) VALUES(?1, ?2, ?3)", -1,
                           &s->put, NULL) != SQLITE_OK) {
        *err = s->db ? sqlite3_errmsg(s->db) : "cannot open a temporary database";
        snprintf(s->errmsg, sizeof s->errmsg, "%s", *err);
        *err = s->errmsg;
        oo_csv_spill_free(s);
        return NULL;
    }
    return s;
}

void oo_csv_spill_free(oo_csv_spill *s) {
    if (!s) return;
    sqlite3_finalize(s->put);
    sqlite3_finalize(s->get);
    sqlite3_close(s->db);
    oo_csv_seen_free(s->groups);
    free(s->last);
    free(s);
}

void oo_csv_spill_read(oo_csv_spill *s, unsigned long long bytes) {
    if (s->groups) oo_csv_seen_read(s->groups, bytes);
}

/* The group of a row: the row number where its ref first appeared. */
static long long group_of(oo_csv_spill *s, const char *ref, size_t n, const char **err) {
    long long grp;
    if (!n) return s->seq; /* a row of its own */
    if (s->last_grp && n == s->last_len && memcmp(ref, s->last, n) == 0) return s->last_grp;
    grp = oo_csv_seen_add(s->groups, ref, n, s->seq, err);
    if (grp < 0) return -1;
    if (grp == 0) grp = s->seq;
    if (n > s->last_cap) {
        char *p = realloc(s->last, n);
        if (!p) {
            *err = "out of memory";
            return -1;
        }
        s->last = p;
        s->last_cap = n;
    }
    memcpy(s->last, ref, n);
    s->last_len = n;
    s->last_grp = grp;
    return grp;
}

int oo_csv_spill_add(oo_csv_spill *s, const char *ref, size_t n, long long line, const char *raw,
                     size_t raw_len, const char **err) {
    long long grp;
    int rc;
    if (s->reading) {
        *err = "rows added after reading began";
        return 0;
    }
    s->seq++;
    grp = group_of(s, ref, ref ? n : 0, err);
    if (grp < 0) return 0;
    sqlite3_bind_int64(s->put, 1, grp);
    sqlite3_bind_int64(s->put, 2, line);
    sqlite3_bind_blob(s->put, 3, raw_len ? raw : "", (int)raw_len, SQLITE_STATIC);
    rc = sqlite3_step(s->put);
    sqlite3_reset(s->put);
    if (rc != SQLITE_DONE) {
        spill_fail(s, "spilling a row", err);
        return 0;
    }
    return 1;
}

int oo_csv_spill_next(oo_csv_spill *s, long long *line, const char **raw, size_t *raw_len,
                      const char **err) {
    int rc;
    if (!s->reading) {
        s->reading = 1;
        /* the groups are no longer needed: free their memory before sorting */
        oo_csv_seen_free(s->groups);
        s->groups = NULL;
        if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_prepare_v2(s->db, "SELECT line, raw FROM rows ORDER BY grp, rowid", -1, &s->get,
                               NULL) != SQLITE_OK)
            return spill_fail(s, "reading the spilled rows", err);
    }
    if (s->ended) return 0; /* a finished statement would start again */
    rc = sqlite3_step(s->get);
    if (rc == SQLITE_DONE) {
        s->ended = 1;
        return 0;
    }
    if (rc != SQLITE_ROW) return spill_fail(s, "reading the spilled rows", err);
    *line = sqlite3_column_int64(s->get, 0);
    *raw = sqlite3_column_blob(s->get, 1);
    *raw_len = (size_t)sqlite3_column_bytes(s->get, 1);
    if (!*raw) *raw = "";
    return 1;
}
