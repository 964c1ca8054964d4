/* What the ledger keeps of an encoded order (see ledger.h): outcome
 * names, the SHA-256 fingerprint, and the entry read from the body with the
 * strict JSON walker. No SQLite and no Lua here (the fuzz target links it
 * alone). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

#include "ledger.h"
#include "date.h"
#include "json_walk.h"
#include "money.h"

static const char *const OUTCOME_NAMES[OO_LEDGER_OUTCOMES + 1] = {NULL, "sent", "warned", "dead",
                                                                  "cancelled"};

const char *oo_ledger_outcome_name(int outcome) {
    return outcome >= 1 && outcome <= OO_LEDGER_OUTCOMES ? OUTCOME_NAMES[outcome] : NULL;
}

int oo_ledger_outcome_of(const char *name) {
    int i;
    for (i = 1; i <= OO_LEDGER_OUTCOMES; i++)
        if (name && strcmp(name, OUTCOME_NAMES[i]) == 0) return i;
    return 0;
}

/* SHA-256 fetched once: EVP_sha256() would look the provider up (under
 * its locks) on every digest. Kept for the process's life. */
static const EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void fetch_sha256(void) {
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    sha256_md = md ? md : EVP_sha256();
}

void oo_ledger_fingerprint(const void *p, size_t n, unsigned char out[OO_LEDGER_FP_LEN]) {
    unsigned int len = 0;
    pthread_once(&sha256_once, fetch_sha256);
    if (!EVP_Digest(p, n, out, &len, sha256_md, NULL)) memset(out, 0, OO_LEDGER_FP_LEN);
}

enum { P_REF, P_DATE, P_CURRENCY, P_TOTAL, P_STORE, P_COUNT };

static void why_is(char *why, size_t cap, const char *text) {
    if (why && cap) snprintf(why, cap, "%s", text);
}

/* A picked string's text: into the body when it has no escape, else
 * appended to the entry's own buffer (*used bytes of it taken). */
static const char *text_of(const oo_json_pick *k, oo_ledger_entry *e, size_t *used, size_t *n) {
    char *at;
    if (!k->escaped) {
        *n = k->raw_len;
        return k->raw;
    }
    at = e->own + *used;
    *n = oo_json_pick_text(k, at, k->raw_len);
    *used += *n;
    return at;
}

/* order.orderDate, order.currency and order.total, when readable. */
static void entry_report_fields(const oo_json_pick *k, oo_ledger_entry *e) {
    char date[64];
    const char *why = NULL;
    int minor = -1;
    if (k[P_DATE].type == 's') {
        size_t n = oo_json_pick_text(&k[P_DATE], date, sizeof date - 1);
        date[n] = '\0';
        e->has_order_at = oo_date_parse(date, n, &e->order_at, &why) == OO_DATE_OK;
    }
    if (k[P_CURRENCY].type == 's' && k[P_CURRENCY].raw_len == 3 && !k[P_CURRENCY].escaped &&
        (minor = oo_currency_minor(k[P_CURRENCY].raw)) >= 0)
        memcpy(e->currency, k[P_CURRENCY].raw, 3);
    if (minor >= 0 && k[P_TOTAL].type == 'n')
        e->has_total = oo_money_from_string(k[P_TOTAL].raw, k[P_TOTAL].raw_len, minor, &e->total) ==
                       OO_MONEY_OK;
}

int oo_ledger_entry_from_body(const char *body, size_t len, const char *store_key,
                              oo_ledger_entry *e, char *why, size_t cap) {
    oo_json_pick k[P_COUNT];
    const oo_json_pick *store;
    size_t used = 0, need;
    memset(e, 0, sizeof *e);
    memset(k, 0, sizeof k);
    if (!store_key) store_key = "store";
    if (strlen(store_key) > OO_LEDGER_STORE_KEY_MAX) {
        why_is(why, cap, "store_key is longer than 256 bytes");
        return -1;
    }
    k[P_REF].path[0] = k[P_DATE].path[0] = k[P_CURRENCY].path[0] = "order";
    k[P_TOTAL].path[0] = k[P_STORE].path[0] = "order";
    k[P_REF].path[1] = "refCode";
    k[P_DATE].path[1] = "orderDate";
    k[P_CURRENCY].path[1] = "currency";
    k[P_TOTAL].path[1] = "total";
    k[P_STORE].path[1] = "attributes";
    k[P_STORE].path[2] = store_key;
    oo_ledger_fingerprint(body, len, e->fp);
    if (!body || !oo_json_pick_values(body, len, k, P_COUNT)) {
        why_is(why, cap, "the body is not one JSON object (an encoded order)");
        return -1;
    }
    if (k[P_REF].type != 's' || k[P_REF].raw_len == 0) {
        why_is(why, cap, "the body has no order.refCode string");
        return -1;
    }
    store = &k[P_STORE];
    need = (k[P_REF].escaped ? k[P_REF].raw_len : 0) + (store->escaped ? store->raw_len : 0);
    if (need && !(e->own = (char *)malloc(need))) {
        why_is(why, cap, "out of memory");
        return -1;
    }
    e->ref = text_of(&k[P_REF], e, &used, &e->ref_len);
    if (store->type == 's') e->store = text_of(store, e, &used, &e->store_len);
    else if (store->type == 'n' || store->type == 't' || store->type == 'f') {
        e->store = store->raw;
        e->store_len = store->raw_len;
    }
    entry_report_fields(k, e);
    return 0;
}

void oo_ledger_entry_free(oo_ledger_entry *e) {
    free(e->own);
    e->own = NULL;
}
