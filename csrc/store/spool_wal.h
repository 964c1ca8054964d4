/* The spool's SQLite VFS: the default one with WAL writes gathered into
 * one write per transaction (spool_wal.c). */
#ifndef OO_SPOOL_WAL_H
#define OO_SPOOL_WAL_H

#define OO_SPOOL_VFS "optimizely-offline-spool"

/* Registers the VFS on first use; its name, or NULL when the default VFS
 * cannot be wrapped (then use the default). */
const char *oo_spool_vfs(void);

#endif
