/* The message of an amend's new version that was not posted because the
 * DELETE of the earlier version ended dead: one text, whether the
 * scheduler held the new version in memory (sched.c) or the spool did
 * (spool.c, its dead letter and the result the worker reports). */
#ifndef OO_AMEND_H
#define OO_AMEND_H

#define OO_AMEND_FAILED "amend: not sent, the DELETE of the earlier version failed: "

#endif
