/* The ledger inside a spool's file: the one place that knows both the
 * spool (spool.h) and the ledger (ledger.h). The ledger runs its calls as
 * the spool's transactions through an oo_ledger_host; the spool writes the
 * ledger's rows on ack, kill and expiry (oo_spool_set_ledger). */
#ifndef OO_SPOOL_LEDGER_H
#define OO_SPOOL_LEDGER_H

#include "ledger.h"
#include "spool.h"

/* The ledger inside the spool's file: from now on (for every handle on
 * that spool connection, the delivery thread's included) an ack writes a
 * sent/warned row, a kill or an expiry a dead row, the ack of a cancel row
 * a cancelled row, each in the spool's transaction. Returns a ledger
 * handle on the spool's connection (close it like any). */
int oo_ledger_of_spool(oo_spool *s, const oo_ledger_cfg *cfg, const oo_ledger_opts *o,
                       oo_ledger **out, oo_spool_err *err);

#endif
