/*
 * mpring: app (producer) side of mpshim's shared-memory request/response
 * ring. The isolator creates the ring in a sealed memfd (ring.Create in Go)
 * and hands it over at registration; every thread of the app may then call
 * mpring_call concurrently. No function here allocates memory, and errno is
 * left exactly as it was on entry.
 */
#ifndef MPRING_H
#define MPRING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "mpring_layout.h"

/* Process-private view of one ring. Zero-initialise before mpring_attach. */
struct mpring {
	unsigned char *base;  /* start of the mapping, NULL when detached */
	size_t map_size;      /* bytes mapped */
	unsigned char *req;   /* request ring */
	uint64_t req_size;    /* bytes, power of two */
	unsigned char *slots; /* first response slot */
	uint32_t slot_count;
	uint32_t slot_size;
	uint32_t max_req;     /* largest request payload */
	uint32_t spin;        /* polls of the reply word before yielding */
	uint32_t yields;      /* sched_yield rounds before futex-waiting */
	uint32_t hint;        /* rotating start word of slot allocation */
	int peer_fd;          /* liveness descriptor (mpring_set_peer), -1 when none */
	uint32_t gone;        /* the peer descriptor hung up: dead for this process */
	/* Free/used bitmap of response slots; private to this process. */
	uint64_t slot_map[MPRING_MAX_SLOT_COUNT / 64];
};

/* Counters kept in the shared header. */
struct mpring_stats {
	uint64_t cons_wakes;   /* futex wakes of the consumer by producers */
	uint64_t reply_wakes;  /* futex wakes of callers by the consumer */
	uint64_t cons_sleeps;  /* times the consumer slept */
	uint64_t wait_sleeps;  /* times a caller futex-waited for its reply */
	uint64_t space_sleeps; /* times a producer waited for ring space */
};

/* Validates the region in memfd and maps it. Returns 0 or -errno
 * (-EPROTO for a bad header). The fd may be closed afterwards. */
int mpring_attach(struct mpring *r, int memfd);

/* Sends one request and waits for its reply. Thread-safe. Returns 0 with
 * *resplen set, or -errno: -EPIPE when the ring is dead, -EMSGSIZE when the
 * request exceeds the ring's limit or the reply exceeds respcap (then
 * *resplen holds the reply length), -EPROTO when the consumer wrote an
 * impossible reply, -EBADF when r is not attached. */
int mpring_call(struct mpring *r, const void *req, size_t reqlen,
		void *resp, size_t respcap, size_t *resplen);

/* As mpring_call with the request gathered from iov. */
int mpring_callv(struct mpring *r, const struct iovec *iov, int iovcnt,
		 void *resp, size_t respcap, size_t *resplen);

/* As mpring_callv with prepare(arg) run once the call holds its response
 * slot and before the request is published. A nonzero return (a negative
 * errno) abandons the call, which then returns it; nothing is published.
 * The shim sends a request's descriptors from prepare, so that they reach
 * the isolator only when their request follows at once (it waits for
 * descriptors a bounded time and holds a bounded number of them). */
int mpring_callv_prepared(struct mpring *r, const struct iovec *iov, int iovcnt,
			  void *resp, size_t respcap, size_t *resplen,
			  int (*prepare)(void *), void *arg);

/* Names a descriptor whose hang-up means the consumer is gone (the shim's
 * registration connection): a consumer that dies without marking the ring
 * dead (SIGKILL) is noticed by polling it while a call waits, so no call
 * waits longer than MPRING_PEER_POLL_MS (plus scheduling) after the death.
 * -1 turns the check off. The descriptor must stay open while calls run. */
void mpring_set_peer(struct mpring *r, int fd);
/* Polls the peer descriptor now: nonzero (and the ring dead for this
 * process) once it hung up. */
int mpring_peer_gone(struct mpring *r);
/* How often a waiting call polls the peer descriptor, in milliseconds. */
#define MPRING_PEER_POLL_MS 20
/* Marks the ring dead: waiting and later calls return -EPIPE. */
void mpring_mark_dead(struct mpring *r);

/* Nonzero once the ring is dead. */
int mpring_is_dead(const struct mpring *r);

/* Unmaps the ring without touching its contents (fork child). */
void mpring_detach(struct mpring *r);

/* Copies the shared counters. */
void mpring_get_stats(const struct mpring *r, struct mpring_stats *st);

#endif /* MPRING_H */
