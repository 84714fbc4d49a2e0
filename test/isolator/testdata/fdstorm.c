/*
 * fdstorm: many threads creating and connecting sockets at once under
 * libmpshim.so, while the ring's response slots are all held.
 *
 *   fdstorm HOLDERS WORKERS BLACKHOLE_IP:PORT ECHO_IP:PORT
 *
 * HOLDERS threads connect (blocking) to an address nobody answers, so each
 * holds a ring slot for as long as the INS tries (seconds). Once they are
 * all on their way, WORKERS threads each create a socket and connect it to
 * an echo server: the creation passes a descriptor to the isolator, and
 * the request must wait for a slot. Each worker then echoes one line.
 * Prints one line per outcome and "workers ok N/M", "longest wait S".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in blackhole, echo;
static atomic_int started, go, workers_ok, holders_done;
static atomic_int errs[256];
static atomic_long longest_ns;

static int parse(const char *s, struct sockaddr_in *a)
{
	char host[64];
	const char *c = strrchr(s, ':');

	if (!c || (size_t)(c - s) >= sizeof host)
		return -1;
	memcpy(host, s, (size_t)(c - s));
	host[c - s] = 0;
	memset(a, 0, sizeof *a);
	a->sin_family = AF_INET;
	a->sin_port = htons((unsigned short)atoi(c + 1));
	return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

static long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *holder(void *arg)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);

	(void)arg;
	atomic_fetch_add(&started, 1);
	if (s < 0) {
		atomic_fetch_add(&errs[errno & 255], 1);
	} else {
		if (connect(s, (struct sockaddr *)&blackhole, sizeof blackhole) == 0)
			printf("holder: connected to the black hole\n");
		close(s);
	}
	atomic_fetch_add(&holders_done, 1);
	return NULL;
}

static void *worker(void *arg)
{
	char msg[64], buf[64];
	long t0, d, cur;
	int s, n, got = 0;

	snprintf(msg, sizeof msg, "worker %ld\n", (long)(intptr_t)arg);
	while (!atomic_load(&go))
		usleep(1000);
	t0 = now_ns();
	s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&echo, sizeof echo) < 0) {
		printf("worker: %s: %s\n", s < 0 ? "socket" : "connect", strerror(errno));
		if (s >= 0)
			close(s);
		return NULL;
	}
	d = now_ns() - t0;
	cur = atomic_load(&longest_ns);
	while (d > cur && !atomic_compare_exchange_weak(&longest_ns, &cur, d))
		;
	n = (int)strlen(msg);
	if (write(s, msg, (size_t)n) != n) {
		printf("worker: write: %s\n", strerror(errno));
		close(s);
		return NULL;
	}
	while (got < n) {
		int k = (int)read(s, buf + got, (size_t)(n - got));
		if (k <= 0) {
			printf("worker: read: %s\n", k < 0 ? strerror(errno) : "EOF");
			close(s);
			return NULL;
		}
		got += k;
	}
	close(s);
	if (memcmp(buf, msg, (size_t)n) != 0) {
		printf("worker: echo differs\n");
		return NULL;
	}
	atomic_fetch_add(&workers_ok, 1);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_attr_t at;
	pthread_t *th;
	int holders, workers, i;

	if (argc != 5 || parse(argv[3], &blackhole) || parse(argv[4], &echo)) {
		fprintf(stderr, "usage: fdstorm HOLDERS WORKERS BLACKHOLE_IP:PORT ECHO_IP:PORT\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	holders = atoi(argv[1]);
	workers = atoi(argv[2]);
	th = calloc((size_t)(holders + workers), sizeof *th);
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 256 << 10);
	for (i = 0; i < workers; i++)
		if (pthread_create(&th[holders + i], &at, worker, (void *)(intptr_t)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	for (i = 0; i < holders; i++)
		if (pthread_create(&th[i], &at, holder, NULL) != 0) {
			perror("pthread_create");
			return 1;
		}
	while (atomic_load(&started) < holders)
		usleep(1000);
	/* Let the holders' socket creation finish and their connects take
	 * the slots. */
	usleep(300000);
	if (atomic_load(&holders_done) > 0)
		printf("holders: %d returned before the workers started\n", atomic_load(&holders_done));
	atomic_store(&go, 1);
	for (i = 0; i < holders + workers; i++)
		pthread_join(th[i], NULL);
	for (i = 0; i < 256; i++)
		if (atomic_load(&errs[i]))
			printf("holders: socket: %s x%d\n", strerror(i), atomic_load(&errs[i]));
	printf("workers ok %d/%d\n", atomic_load(&workers_ok), workers);
	printf("longest wait %.1f s\n", (double)atomic_load(&longest_ns) / 1e9);
	return 0;
}
