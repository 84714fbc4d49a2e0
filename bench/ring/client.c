//go:build ignore

/* The line above keeps the go tool from treating this file as part of the
 * Go command in this directory; main.go compiles it with cc. */
/*
 * Benchmark client for bench/ring: measures request/response round trips
 * of REQSIZE-byte requests from THREADS threads, first over the shared
 * memory ring (memfd on fd 3), then over AF_UNIX SOCK_SEQPACKET sockets
 * (fds 4 .. 4+MAXTHREADS-1, one per thread), both served by the same Go
 * process. Usage: client N REQSIZE THREADS... ; prints one line per run:
 *   result MODE THREADS COUNT ELAPSED_NS P50_NS P99_NS
 */
#define _GNU_SOURCE
#include "mpring.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXTHREADS 8
#define WARMUP 2000

static struct mpring ring;
static long nreq;
static size_t reqsize;
static int use_ring;
static uint64_t *lat; /* nreq samples per thread */
static pthread_barrier_t start_barrier;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int one_call(int tid, unsigned char *req, unsigned char *resp)
{
	size_t rlen = 0;
	if (use_ring) {
		int rc = mpring_call(&ring, req, reqsize, resp, 256, &rlen);
		if (rc != 0) {
			fprintf(stderr, "client: mpring_call: %s\n", strerror(-rc));
			return -1;
		}
	} else {
		int fd = 4 + tid;
		if (send(fd, req, reqsize, 0) != (ssize_t)reqsize) {
			perror("client: send");
			return -1;
		}
		ssize_t n = recv(fd, resp, 256, 0);
		if (n < 0) {
			perror("client: recv");
			return -1;
		}
		rlen = (size_t)n;
	}
	if (rlen != reqsize || memcmp(req, resp, reqsize) != 0) {
		fprintf(stderr, "client: bad echo\n");
		return -1;
	}
	return 0;
}

static void *worker(void *arg)
{
	int tid = (int)(uintptr_t)arg;
	unsigned char req[256], resp[256];
	uint64_t *out = lat + (size_t)tid * nreq;

	memset(req, 'a' + tid, sizeof req);
	for (int i = 0; i < WARMUP; i++)
		if (one_call(tid, req, resp) < 0)
			exit(1);
	pthread_barrier_wait(&start_barrier);
	for (long i = 0; i < nreq; i++) {
		memcpy(req, &i, sizeof i);
		uint64_t t0 = now_ns();
		if (one_call(tid, req, resp) < 0)
			exit(1);
		out[i] = now_ns() - t0;
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void run(int threads)
{
	pthread_t th[MAXTHREADS];
	uint64_t t0, t1;
	size_t total = (size_t)threads * nreq;

	pthread_barrier_init(&start_barrier, NULL, (unsigned)threads + 1);
	for (int i = 0; i < threads; i++)
		pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i);
	pthread_barrier_wait(&start_barrier);
	t0 = now_ns();
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	t1 = now_ns();
	pthread_barrier_destroy(&start_barrier);
	qsort(lat, total, sizeof *lat, cmp_u64);
	printf("result %s %d %zu %llu %llu %llu\n", use_ring ? "ring" : "seqpacket", threads, total,
	       (unsigned long long)(t1 - t0), (unsigned long long)lat[total / 2],
	       (unsigned long long)lat[total * 99 / 100]);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int rc;

	if (argc < 4) {
		fprintf(stderr, "usage: client N REQSIZE THREADS...\n");
		return 2;
	}
	nreq = atol(argv[1]);
	reqsize = (size_t)atol(argv[2]);
	if (nreq < 1 || reqsize < sizeof(long) || reqsize > 256)
		return 2;
	rc = mpring_attach(&ring, 3);
	if (rc != 0) {
		fprintf(stderr, "client: mpring_attach: %s\n", strerror(-rc));
		return 1;
	}
	lat = calloc((size_t)MAXTHREADS * nreq, sizeof *lat);
	if (!lat)
		return 1;
	for (int a = 3; a < argc; a++) {
		int threads = atoi(argv[a]);
		if (threads < 1 || threads > MAXTHREADS)
			return 2;
		for (use_ring = 1; use_ring >= 0; use_ring--)
			run(threads);
	}
	return 0;
}
