/* The ledger inside a spool's file (see spool_ledger.h). */
#include "spool_ledger.h"
#include "sqlfile.h"

#include <stdio.h>

static int host_run(void *h, const char *what, int write, oo_ledger_step step, void *ctx,
                    oo_spool_err *err) {
    return oo_spool_run((oo_spool *)h, what, write, step, ctx, err);
}

static const char *host_path(const void *h) { return oo_spool_path((const oo_spool *)h); }

static void host_close(void *h) { oo_spool_close((oo_spool *)h); }

int oo_ledger_of_spool(oo_spool *s, const oo_ledger_cfg *cfg, const oo_ledger_opts *o,
                       oo_ledger **out, oo_spool_err *err) {
    oo_ledger_opts opts;
    oo_ledger_cfg copy = *cfg;
    oo_ledger_host host;
    int code;
    *out = NULL;
    if (o) opts = *o;
    else oo_ledger_opts_init(&opts);
    opts.store_key = cfg->store_key[0] ? cfg->store_key : NULL;
    opts.keep_days = cfg->keep_days;
    if ((code = oo_ledger_opts_check(&opts, err)) != OO_SPOOL_OK) return code;
    if (!cfg->host[0] || !cfg->site[0] || !cfg->channel[0])
        return oo_sql_err(err, OO_SPOOL_MISUSE, 0, NULL,
                          "ledger of_spool: host, site and channel are required");
    if (!copy.store_key[0]) snprintf(copy.store_key, sizeof copy.store_key, "store");
    if ((code = oo_spool_set_ledger(s, &copy, err)) != OO_SPOOL_OK) return code;
    /* the ledger's own handle on the spool's connection: closed with it */
    host.run = host_run;
    host.path = host_path;
    host.close = host_close;
    if ((code = oo_spool_reopen(s, (oo_spool **)&host.h, err)) != OO_SPOOL_OK) return code;
    if ((code = oo_ledger_hosted(&host, &opts, out, err)) != OO_SPOOL_OK) oo_spool_close(host.h);
    return code;
}
