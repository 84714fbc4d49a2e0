/*
 * Test producer for ring's cross-process tests.
 *
 *   producer load THREADS COUNT   (ring memfd on fd 3)
 *     THREADS threads each send COUNT requests
 *       u32 tid | u32 paylen | u64 seq | payload[paylen] | u32 fnv1a(all before)
 *     and check each reply
 *       u64 seq^REPLY_XOR | u32 tid | u32 ~checksum | payload bytes + 1
 *     Prints "ok calls=N cons_wakes=.. reply_wakes=.. cons_sleeps=.. wait_sleeps=.. space_sleeps=.."
 *
 *   producer errors               (ring memfd on fd 3)
 *     checks -EMSGSIZE for an oversized request, errno preservation, then
 *     sends "block" and expects -EPIPE once the consumer closes the ring.
 *
 *   producer peer                 (ring memfd on fd 3, peer socket on fd 4)
 *     sends "block" and expects -EPIPE once fd 4's peer hangs up, though
 *     the ring itself is never marked dead (a consumer killed outright);
 *     prints "ok peer waited_ms=N" (N: from the hang-up seen by poll to
 *     the call's return is what the bound covers; N is the whole wait).
 */
#define _GNU_SOURCE
#include "../mpring.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REPLY_XOR 0x5eed5eed5eed5eedULL
#define MAXPAY 256

static struct mpring ring;
static long count;
static int failed;

static uint32_t fnv1a(const unsigned char *p, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}

static void fail(const char *msg, uint32_t tid, uint64_t seq, long v)
{
	fprintf(stderr, "producer: thread %u seq %llu: %s (%ld)\n", tid,
		(unsigned long long)seq, msg, v);
	__atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
}

static void *worker(void *arg)
{
	uint32_t tid = (uint32_t)(uintptr_t)arg;
	uint64_t x = 0x9e3779b97f4a7c15ULL * (tid + 1);
	unsigned char req[16 + MAXPAY + 4], resp[16 + MAXPAY + 64];

	for (uint64_t seq = 1; seq <= (uint64_t)count; seq++) {
		if (__atomic_load_n(&failed, __ATOMIC_RELAXED))
			return NULL;
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint32_t plen = (uint32_t)(x % (MAXPAY + 1));
		memcpy(req, &tid, 4);
		memcpy(req + 4, &plen, 4);
		memcpy(req + 8, &seq, 8);
		for (uint32_t i = 0; i < plen; i++)
			req[16 + i] = (unsigned char)(x >> (i % 56)) ^ (unsigned char)i;
		uint32_t sum = fnv1a(req, 16 + plen);
		memcpy(req + 16 + plen, &sum, 4);

		size_t rlen = 0;
		int rc = mpring_call(&ring, req, 16 + plen + 4, resp, sizeof resp, &rlen);
		if (rc != 0) {
			fail("mpring_call failed", tid, seq, rc);
			return NULL;
		}
		if (rlen != 16 + plen) {
			fail("reply length", tid, seq, (long)rlen);
			return NULL;
		}
		uint64_t rseq;
		uint32_t rtid, rsum;
		memcpy(&rseq, resp, 8);
		memcpy(&rtid, resp + 8, 4);
		memcpy(&rsum, resp + 12, 4);
		if (rseq != (seq ^ REPLY_XOR) || rtid != tid || rsum != ~sum) {
			fail("reply header mismatch", tid, seq, (long)rtid);
			return NULL;
		}
		for (uint32_t i = 0; i < plen; i++) {
			if (resp[16 + i] != (unsigned char)(req[16 + i] + 1)) {
				fail("reply payload mismatch", tid, seq, (long)i);
				return NULL;
			}
		}
	}
	return NULL;
}

static int run_load(int threads)
{
	pthread_t th[64];

	if (threads < 1 || threads > 64)
		return 2;
	for (int i = 0; i < threads; i++)
		if (pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i) != 0) {
			fprintf(stderr, "producer: pthread_create failed\n");
			return 1;
		}
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	if (failed)
		return 1;
	struct mpring_stats st;
	mpring_get_stats(&ring, &st);
	printf("ok calls=%ld cons_wakes=%llu reply_wakes=%llu cons_sleeps=%llu wait_sleeps=%llu space_sleeps=%llu\n",
	       (long)threads * count, (unsigned long long)st.cons_wakes,
	       (unsigned long long)st.reply_wakes, (unsigned long long)st.cons_sleeps,
	       (unsigned long long)st.wait_sleeps, (unsigned long long)st.space_sleeps);
	return 0;
}

static int run_errors(void)
{
	static unsigned char big[1 << 20];
	unsigned char resp[64];
	size_t rlen = 0;
	int rc;

	errno = 4242;
	rc = mpring_call(&ring, big, ring.max_req + 1, resp, sizeof resp, &rlen);
	if (rc != -EMSGSIZE || errno != 4242) {
		fprintf(stderr, "producer: oversized call: rc %d errno %d\n", rc, errno);
		return 1;
	}
	rc = mpring_call(&ring, "small", 5, resp, 2, &rlen);
	if (rc != -EMSGSIZE || rlen != 5) {
		fprintf(stderr, "producer: short response buffer: rc %d rlen %zu\n", rc, rlen);
		return 1;
	}
	rc = mpring_call(&ring, "block", 5, resp, sizeof resp, &rlen);
	if (rc != -EPIPE || errno != 4242) {
		fprintf(stderr, "producer: call on closed ring: rc %d errno %d\n", rc, errno);
		return 1;
	}
	rc = mpring_call(&ring, "after", 5, resp, sizeof resp, &rlen);
	if (rc != -EPIPE) {
		fprintf(stderr, "producer: call after death: rc %d\n", rc);
		return 1;
	}
	printf("ok errors\n");
	return 0;
}

static int run_peer(void)
{
	unsigned char resp[64];
	size_t rlen = 0;
	struct timespec a, b;
	int rc;

	mpring_set_peer(&ring, 4);
	errno = 4242;
	clock_gettime(CLOCK_MONOTONIC, &a);
	rc = mpring_call(&ring, "block", 5, resp, sizeof resp, &rlen);
	clock_gettime(CLOCK_MONOTONIC, &b);
	if (rc != -EPIPE || errno != 4242) {
		fprintf(stderr, "producer: call with a hung-up peer: rc %d errno %d\n", rc, errno);
		return 1;
	}
	rc = mpring_call(&ring, "after", 5, resp, sizeof resp, &rlen);
	if (rc != -EPIPE) {
		fprintf(stderr, "producer: call after the hang-up: rc %d\n", rc);
		return 1;
	}
	printf("ok peer waited_ms=%ld\n",
	       (long)((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000));
	return 0;
}

int main(int argc, char **argv)
{
	int rc;

	if (argc < 2) {
		fprintf(stderr, "usage: producer load THREADS COUNT | producer errors | producer peer\n");
		return 2;
	}
	rc = mpring_attach(&ring, 3);
	if (rc != 0) {
		fprintf(stderr, "producer: mpring_attach: %s\n", strerror(-rc));
		return 1;
	}
	if (getenv("MPRING_SPIN"))
		ring.spin = (uint32_t)atol(getenv("MPRING_SPIN"));
	if (getenv("MPRING_YIELDS"))
		ring.yields = (uint32_t)atol(getenv("MPRING_YIELDS"));
	if (strcmp(argv[1], "load") == 0 && argc == 4) {
		count = atol(argv[3]);
		rc = run_load(atoi(argv[2]));
	} else if (strcmp(argv[1], "errors") == 0) {
		rc = run_errors();
	} else if (strcmp(argv[1], "peer") == 0) {
		rc = run_peer();
	} else {
		rc = 2;
	}
	fflush(stdout);
	mpring_detach(&ring);
	return rc;
}
