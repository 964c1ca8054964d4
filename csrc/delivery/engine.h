/* The libcurl engine: one scheduler (sched.h) driven by the libcurl driver
 * (driver_curl.h). send_batch drives one from the calling thread
 * (l_engine.c: core.engine_new), the queue from a thread of its own
 * (worker.h). Its Lua side (reading the configuration) is l_engine.h. */
#ifndef OO_ENGINE_H
#define OO_ENGINE_H

#include "driver_curl.h"
#include "ledger_sink.h"
#include "sched.h"

typedef struct oo_engine {
    oo_sched s; /* first: the record hook finds the engine from its scheduler */
    oo_curl d;
    oo_ledger_sink sink; /* with cfg.ledger: the record hook's (sink.l NULL: none) */
} oo_engine;

/* Aborts what is in flight and frees everything (the sink writes what waits). */
static inline void oo_engine_free(oo_engine *e) {
    oo_curl_free(&e->d);
    oo_ledger_sink_free(&e->sink);
    oo_sched_free(&e->s);
}

#endif
