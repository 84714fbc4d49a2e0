//go:build ignore

/* The line above keeps the go tool from treating this C file as part of the
 * cgo-free ring package; C builds compile it directly. */
/*
 * mpring.c: producer side of the mpshim request/response ring.
 * Layout constants come from mpring_layout.h, generated from ring/layout.go.
 * Only libc and Linux headers; no allocation; errno preserved.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "mpring.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <linux/futex.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MPRING_DEFAULT_SPIN 100u
#define MPRING_DEFAULT_YIELDS 16u
/* Re-check the dead word and the peer descriptor this often. */
#define MPRING_WAIT_NS (MPRING_PEER_POLL_MS * 1000000L)

#define U32(p) ((uint32_t *)(void *)(p))
#define U64(p) ((uint64_t *)(void *)(p))
#define HDR32(r, off) U32((r)->base + (off))
#define HDR64(r, off) U64((r)->base + (off))

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

/* Shared (non-private) futex wait with a relative timeout. */
static void futex_wait(uint32_t *addr, uint32_t val, long ns)
{
	struct timespec ts = { ns / 1000000000L, ns % 1000000000L };
	syscall(SYS_futex, addr, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake(uint32_t *addr, int n)
{
	syscall(SYS_futex, addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

static inline uint64_t ld64(const unsigned char *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof v);
	return v;
}

static inline uint32_t ld32(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof v);
	return v;
}

int mpring_attach(struct mpring *r, int memfd)
{
	int saved = errno, rc = 0;
	struct stat st;
	unsigned char *base;
	uint64_t total, req_off, req_size, slot_off;
	uint32_t count, ssize, max_req;

	memset(r, 0, sizeof *r);
	if (fstat(memfd, &st) < 0) {
		rc = -errno;
		goto out;
	}
	if (st.st_size < (off_t)MPRING_HEADER_SIZE || (uint64_t)st.st_size > (1ULL << 40)) {
		rc = -EPROTO;
		goto out;
	}
	base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (base == MAP_FAILED) {
		rc = -errno;
		goto out;
	}
	total = ld64(base + MPRING_OFF_TOTAL_SIZE);
	req_off = ld64(base + MPRING_OFF_REQ_OFF);
	req_size = ld64(base + MPRING_OFF_REQ_SIZE);
	slot_off = ld64(base + MPRING_OFF_SLOT_OFF);
	count = ld32(base + MPRING_OFF_SLOT_COUNT);
	ssize = ld32(base + MPRING_OFF_SLOT_SIZE);
	max_req = ld32(base + MPRING_OFF_MAX_REQ);
	if (__atomic_load_n(U32(base + MPRING_OFF_MAGIC), __ATOMIC_ACQUIRE) != MPRING_MAGIC ||
	    ld32(base + MPRING_OFF_VERSION) != MPRING_VERSION ||
	    total != (uint64_t)st.st_size ||
	    req_off < MPRING_HEADER_SIZE || req_off % 64 != 0 ||
	    req_size < 4096 || (req_size & (req_size - 1)) != 0 ||
	    req_size > total || req_off > total - req_size ||
	    slot_off < req_off + req_size || slot_off % 64 != 0 ||
	    count == 0 || count > MPRING_MAX_SLOT_COUNT ||
	    ssize < 2 * MPRING_SLOT_HDR_SIZE || ssize % 64 != 0 ||
	    slot_off > total || (uint64_t)count * ssize > total - slot_off ||
	    max_req == 0 || max_req > req_size / 4 - MPRING_REC_HDR_SIZE) {
		munmap(base, (size_t)st.st_size);
		rc = -EPROTO;
		goto out;
	}
	r->base = base;
	r->map_size = (size_t)st.st_size;
	r->req = base + req_off;
	r->req_size = req_size;
	r->slots = base + slot_off;
	r->slot_count = count;
	r->slot_size = ssize;
	r->max_req = max_req;
	r->spin = MPRING_DEFAULT_SPIN;
	r->yields = MPRING_DEFAULT_YIELDS;
	r->peer_fd = -1;
	/* Bits past slot_count stay set so they are never handed out. */
	for (uint32_t i = count; i < MPRING_MAX_SLOT_COUNT; i++)
		r->slot_map[i / 64] |= 1ULL << (i % 64);
out:
	errno = saved;
	return rc;
}

void mpring_detach(struct mpring *r)
{
	int saved = errno;

	if (r->base)
		munmap(r->base, r->map_size);
	r->base = NULL;
	errno = saved;
}

int mpring_is_dead(const struct mpring *r)
{
	return r->base == NULL || __atomic_load_n(&r->gone, __ATOMIC_ACQUIRE) != 0 ||
	       __atomic_load_n(HDR32(r, MPRING_OFF_DEAD), __ATOMIC_ACQUIRE) != 0;
}

void mpring_set_peer(struct mpring *r, int fd)
{
	__atomic_store_n(&r->peer_fd, fd, __ATOMIC_RELEASE);
}

/* Polls the peer descriptor: nonzero (and the ring dead for this process)
 * once it hung up. A consumer killed outright never sets the dead word;
 * the kernel closes its end of the registration connection. */
int mpring_peer_gone(struct mpring *r)
{
	int saved = errno, fd = __atomic_load_n(&r->peer_fd, __ATOMIC_ACQUIRE);
	struct pollfd p = { .fd = fd, .events = POLLRDHUP };

	if (fd < 0)
		return 0;
	if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))) {
		__atomic_store_n(&r->gone, 1, __ATOMIC_RELEASE);
		errno = saved;
		return 1;
	}
	errno = saved;
	return 0;
}

void mpring_mark_dead(struct mpring *r)
{
	int saved = errno;

	if (!r->base)
		return;
	__atomic_store_n(HDR32(r, MPRING_OFF_DEAD), 1, __ATOMIC_SEQ_CST);
	for (uint32_t i = 0; i < r->slot_count; i++)
		futex_wake(U32(r->slots + (size_t)i * r->slot_size + MPRING_SLOT_OFF_STATE), INT_MAX);
	futex_wake(HDR32(r, MPRING_OFF_HEAD), INT_MAX);
	errno = saved;
}

void mpring_get_stats(const struct mpring *r, struct mpring_stats *st)
{
	memset(st, 0, sizeof *st);
	if (!r->base)
		return;
	st->cons_wakes = __atomic_load_n(HDR64(r, MPRING_OFF_STAT_CONS_WAKES), __ATOMIC_RELAXED);
	st->reply_wakes = __atomic_load_n(HDR64(r, MPRING_OFF_STAT_REPLY_WAKES), __ATOMIC_RELAXED);
	st->cons_sleeps = __atomic_load_n(HDR64(r, MPRING_OFF_STAT_CONS_SLEEPS), __ATOMIC_RELAXED);
	st->wait_sleeps = __atomic_load_n(HDR64(r, MPRING_OFF_STAT_WAIT_SLEEPS), __ATOMIC_RELAXED);
	st->space_sleeps = __atomic_load_n(HDR64(r, MPRING_OFF_STAT_SPACE_SLEEPS), __ATOMIC_RELAXED);
}

/* Takes a free response slot from the private bitmap; yields while all
 * are in use (more threads in calls than slots). */
static uint32_t slot_alloc(struct mpring *r)
{
	uint32_t nwords = (r->slot_count + 63) / 64;

	for (;;) {
		uint32_t start = __atomic_fetch_add(&r->hint, 1, __ATOMIC_RELAXED) % nwords;
		for (uint32_t k = 0; k < nwords; k++) {
			uint32_t w = (start + k) % nwords;
			uint64_t v = __atomic_load_n(&r->slot_map[w], __ATOMIC_RELAXED);
			while (~v != 0) {
				int bit = __builtin_ctzll(~v);
				if (__atomic_compare_exchange_n(&r->slot_map[w], &v, v | (1ULL << bit), 0,
								__ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
					return w * 64 + (uint32_t)bit;
			}
		}
		sched_yield();
	}
}

static void slot_free(struct mpring *r, uint32_t slot)
{
	__atomic_fetch_and(&r->slot_map[slot / 64], ~(1ULL << (slot % 64)), __ATOMIC_RELEASE);
}

/* Waits until the consumer frees space (head moves) or the ring dies. */
static void wait_space(struct mpring *r)
{
	uint32_t *head = HDR32(r, MPRING_OFF_HEAD); /* low half of the u64 index */
	uint32_t h;

	__atomic_fetch_add(HDR32(r, MPRING_OFF_SPACE_WAIT), 1, __ATOMIC_SEQ_CST);
	h = __atomic_load_n(head, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(HDR64(r, MPRING_OFF_STAT_SPACE_SLEEPS), 1, __ATOMIC_RELAXED);
	futex_wait(head, h, 1000000L);
	__atomic_fetch_sub(HDR32(r, MPRING_OFF_SPACE_WAIT), 1, __ATOMIC_SEQ_CST);
}

/* Reserves need bytes at a record boundary; returns the record's index.
 * A reservation that would straddle the ring's end also takes the rest of
 * the ring and publishes a padding record there. Returns UINT64_MAX when
 * the ring died while waiting for space. */
static uint64_t reserve(struct mpring *r, uint64_t need)
{
	uint64_t *resv = HDR64(r, MPRING_OFF_RESERVE);
	uint64_t pos = __atomic_load_n(resv, __ATOMIC_RELAXED);
	uint64_t size = r->req_size, off, total, head;

	for (;;) {
		off = pos & (size - 1);
		total = need;
		if (off + need > size)
			total = (size - off) + need;
		head = __atomic_load_n(HDR64(r, MPRING_OFF_HEAD), __ATOMIC_ACQUIRE);
		if (pos < head) { /* pos is stale: the consumer is already past it */
			pos = __atomic_load_n(resv, __ATOMIC_RELAXED);
			continue;
		}
		if (pos + total - head > size) {
			if (mpring_is_dead(r) || mpring_peer_gone(r))
				return UINT64_MAX;
			wait_space(r);
			pos = __atomic_load_n(resv, __ATOMIC_RELAXED);
			continue;
		}
		if (__atomic_compare_exchange_n(resv, &pos, pos + total, 1,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			break;
	}
	if (total != need) {
		__atomic_store_n(U32(r->req + off + MPRING_REC_OFF_COMMIT),
				 (uint32_t)(size - off) | (uint32_t)MPRING_REC_PAD_FLAG, __ATOMIC_RELEASE);
		pos += size - off;
	}
	return pos;
}

/* Wakes the consumer if it advertised that it sleeps. */
static void kick_consumer(struct mpring *r)
{
	uint32_t *st = HDR32(r, MPRING_OFF_CONS_STATE);
	uint32_t exp = MPRING_CONS_SLEEPING;

	if (__atomic_load_n(st, __ATOMIC_SEQ_CST) != MPRING_CONS_SLEEPING)
		return;
	if (__atomic_compare_exchange_n(st, &exp, MPRING_CONS_RUNNING, 0,
					__ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
		__atomic_fetch_add(HDR64(r, MPRING_OFF_STAT_CONS_WAKES), 1, __ATOMIC_RELAXED);
		futex_wake(st, 1);
	}
}

/* Waits for the reply on a slot state word. Returns 0 when done, -EPIPE
 * when the ring died or its peer descriptor hung up (checked every
 * MPRING_PEER_POLL_MS), -EPROTO on an impossible state. */
static int wait_reply(struct mpring *r, uint32_t *st)
{
	for (uint32_t i = 0; i < r->spin; i++) {
		if (__atomic_load_n(st, __ATOMIC_ACQUIRE) == MPRING_SLOT_DONE)
			return 0;
		cpu_relax();
	}
	for (uint32_t i = 0; i < r->yields; i++) {
		sched_yield();
		if (__atomic_load_n(st, __ATOMIC_ACQUIRE) == MPRING_SLOT_DONE)
			return 0;
	}
	for (;;) {
		uint32_t exp = MPRING_SLOT_WAITING;
		if (!__atomic_compare_exchange_n(st, &exp, MPRING_SLOT_SLEEPING, 0,
						 __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE)) {
			if (exp == MPRING_SLOT_DONE)
				return 0;
			if (exp != MPRING_SLOT_SLEEPING)
				return -EPROTO;
		}
		if (mpring_is_dead(r))
			return -EPIPE;
		__atomic_fetch_add(HDR64(r, MPRING_OFF_STAT_WAIT_SLEEPS), 1, __ATOMIC_RELAXED);
		futex_wait(st, MPRING_SLOT_SLEEPING, MPRING_WAIT_NS);
		if (__atomic_load_n(st, __ATOMIC_ACQUIRE) == MPRING_SLOT_DONE)
			return 0;
		if (mpring_is_dead(r) || mpring_peer_gone(r))
			return -EPIPE;
	}
}

int mpring_callv(struct mpring *r, const struct iovec *iov, int iovcnt,
		 void *resp, size_t respcap, size_t *resplen)
{
	return mpring_callv_prepared(r, iov, iovcnt, resp, respcap, resplen, NULL, NULL);
}

int mpring_callv_prepared(struct mpring *r, const struct iovec *iov, int iovcnt,
			  void *resp, size_t respcap, size_t *resplen,
			  int (*prepare)(void *), void *arg)
{
	int saved = errno, rc;
	size_t len = 0;
	uint32_t slot, n;
	uint64_t need, pos;
	unsigned char *s, *rec, *p;
	uint32_t *st;

	if (!r->base) {
		rc = -EBADF;
		goto out;
	}
	if (mpring_is_dead(r)) {
		rc = -EPIPE;
		goto out;
	}
	if (iovcnt < 0) {
		rc = -EINVAL;
		goto out;
	}
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > r->max_req - len) {
			rc = -EMSGSIZE;
			goto out;
		}
		len += iov[i].iov_len;
	}
	slot = slot_alloc(r);
	if (prepare) {
		rc = prepare(arg);
		if (rc != 0) {
			rc = rc < 0 ? rc : -EIO;
			goto free_slot;
		}
	}
	s = r->slots + (size_t)slot * r->slot_size;
	st = U32(s + MPRING_SLOT_OFF_STATE);
	__atomic_store_n(st, MPRING_SLOT_WAITING, __ATOMIC_RELAXED);

	need = (MPRING_REC_HDR_SIZE + len + MPRING_REC_ALIGN - 1) & ~(uint64_t)(MPRING_REC_ALIGN - 1);
	pos = reserve(r, need);
	if (pos == UINT64_MAX) {
		rc = -EPIPE;
		goto free_slot;
	}
	rec = r->req + (pos & (r->req_size - 1));
	*U32(rec + MPRING_REC_OFF_LEN) = (uint32_t)len;
	*U32(rec + MPRING_REC_OFF_SLOT) = slot;
	*U32(rec + MPRING_REC_OFF_POS) = (uint32_t)pos;
	p = rec + MPRING_REC_HDR_SIZE;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len) {
			memcpy(p, iov[i].iov_base, iov[i].iov_len);
			p += iov[i].iov_len;
		}
	}
	/* Publish; sequentially consistent so the consumer-state load below
	 * cannot pass it (pairs with the consumer's store-then-recheck). */
	__atomic_store_n(U32(rec + MPRING_REC_OFF_COMMIT), (uint32_t)need, __ATOMIC_SEQ_CST);
	kick_consumer(r);

	rc = wait_reply(r, st);
	if (rc == 0) {
		n = __atomic_load_n(U32(s + MPRING_SLOT_OFF_LEN), __ATOMIC_RELAXED);
		if (n > r->slot_size - MPRING_SLOT_HDR_SIZE) {
			rc = -EPROTO;
		} else {
			if (resplen)
				*resplen = n;
			if (n > respcap)
				rc = -EMSGSIZE;
			else if (n)
				memcpy(resp, s + MPRING_SLOT_HDR_SIZE, n);
		}
	}
	__atomic_store_n(st, MPRING_SLOT_IDLE, __ATOMIC_RELAXED);
free_slot:
	slot_free(r, slot);
out:
	errno = saved;
	return rc;
}

int mpring_call(struct mpring *r, const void *req, size_t reqlen,
		void *resp, size_t respcap, size_t *resplen)
{
	struct iovec iov = { (void *)(uintptr_t)req, reqlen };

	return mpring_callv(r, &iov, 1, resp, respcap, resplen);
}
