/*
 * common.h: helpers of the conformance programs. Every program is run as
 *   prog V4 V6 UNROUTABLE
 * where V4/V6 are the peer's addresses (the harness's kernel peer serves
 * the ports below on both) and UNROUTABLE is an address with no route.
 * Programs print what they observe, one fact per line, with addresses
 * normalised ("$V4", "$V6", "local") and ephemeral ports hidden, so that
 * the output is the same natively and under the shim.
 */
#ifndef CONFORMANCE_COMMON_H
#define CONFORMANCE_COMMON_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
	PORT_ECHO = 7001,    /* TCP: echoes; on EOF shuts down its side */
	PORT_HELLO = 7002,   /* TCP: sends "hello\n" and closes */
	PORT_CLOSE = 7003,   /* TCP: accepts and closes at once */
	PORT_CLOSED = 7004,  /* nothing listens */
	PORT_UDP = 7005,     /* UDP: echoes each datagram to its source */
	PORT_BACK = 7007,    /* TCP: reads a 2-byte port, connects back to the
				client's address on it, sends "hi", closes */
};

static const char *V4, *V6, *UNROUTABLE;

static inline __attribute__((unused)) void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static inline __attribute__((unused)) const char *en(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

/* Prints "what: ok" / "what: = N" or "what: -1 ENAME". */
static inline __attribute__((unused)) long res(const char *what, long rc)
{
	if (rc < 0)
		say("%s: -1 %s", what, en(errno));
	else if (rc == 0)
		say("%s: ok", what);
	else
		say("%s: %ld", what, rc);
	return rc;
}

static inline __attribute__((unused)) void init(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s V4 V6 UNROUTABLE\n", argv[0]);
		exit(2);
	}
	V4 = argv[1];
	V6 = argv[2];
	UNROUTABLE = argv[3];
	setvbuf(stdout, NULL, _IOLBF, 0);
}

union addr {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
	struct sockaddr_storage ss;
};

static inline __attribute__((unused)) socklen_t mkaddr(union addr *a, int fam, const char *ip, int port)
{
	memset(a, 0, sizeof *a);
	if (fam == AF_INET) {
		a->in.sin_family = AF_INET;
		a->in.sin_port = htons((uint16_t)port);
		if (ip && inet_pton(AF_INET, ip, &a->in.sin_addr) != 1)
			exit(3);
		return sizeof a->in;
	}
	a->in6.sin6_family = AF_INET6;
	a->in6.sin6_port = htons((uint16_t)port);
	if (ip && inet_pton(AF_INET6, ip, &a->in6.sin6_addr) != 1)
		exit(3);
	return sizeof a->in6;
}

static inline __attribute__((unused)) const char *peer_ip(int fam)
{
	return fam == AF_INET ? V4 : V6;
}

/* Normalised text of an address: family, "$V4"/"$V6"/"any"/"other" (with
 * local set: "local" for any specific address, see fmt_local), port when it
 * is one of ours and local is not set, else "eph" (ephemeral) or 0. */
static inline const char *fmt_addr(const union addr *a, socklen_t len, char *buf, size_t cap, int local)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	const char *who;
	int port;

	if (len < sizeof(sa_family_t)) {
		snprintf(buf, cap, "len=%u", len);
		return buf;
	}
	if (a->sa.sa_family == AF_INET) {
		inet_ntop(AF_INET, &a->in.sin_addr, ip, sizeof ip);
		port = ntohs(a->in.sin_port);
	} else if (a->sa.sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &a->in6.sin6_addr, ip, sizeof ip);
		port = ntohs(a->in6.sin6_port);
	} else {
		snprintf(buf, cap, "family=%d", a->sa.sa_family);
		return buf;
	}
	if (!strcmp(ip, "0.0.0.0") || !strcmp(ip, "::"))
		who = "any";
	else if (local)
		who = "local";
	else if (!strcmp(ip, V4))
		who = "$V4";
	else if (!strcmp(ip, V6))
		who = "$V6";
	else
		who = "other";
	/* A connected socket's local port (local set) is ephemeral even where
	 * it falls among ours: an INS draws from 1024-65535. */
	if (port >= 7000 && port < 7100 && !local)
		snprintf(buf, cap, "%s %s:%d", a->sa.sa_family == AF_INET ? "inet" : "inet6", who,
			 port);
	else
		snprintf(buf, cap, "%s %s:%s", a->sa.sa_family == AF_INET ? "inet" : "inet6", who,
			 port ? "eph" : "0");
	return buf;
}

static inline __attribute__((unused)) const char *fmt(const union addr *a, socklen_t len, char *buf, size_t cap)
{
	return fmt_addr(a, len, buf, cap, 0);
}

/* Like fmt, for the local address of a connected socket: any specific
 * address prints as "local". Which one it is depends on where the stack
 * runs (natively the program shares the peer's namespace and address; under
 * the shim it is the network stack's own), so only its family and its being
 * specific are observable facts. */
static inline __attribute__((unused)) const char *fmt_local(const union addr *a, socklen_t len, char *buf, size_t cap)
{
	return fmt_addr(a, len, buf, cap, 1);
}

static inline __attribute__((unused)) int sock(int fam, int type)
{
	int s = socket(fam, type, 0);

	if (s < 0) {
		say("socket: -1 %s", en(errno));
		exit(1);
	}
	return s;
}

/* Blocking connect to the peer; exits on failure. */
static inline __attribute__((unused)) int dial(int fam, int port)
{
	union addr a;
	socklen_t l = mkaddr(&a, fam, peer_ip(fam), port);
	int s = sock(fam, SOCK_STREAM);

	if (connect(s, &a.sa, l) < 0) {
		say("dial %d: -1 %s", port, en(errno));
		exit(1);
	}
	return s;
}

static inline __attribute__((unused)) void set_nonblock(int s, int on)
{
	int fl = fcntl(s, F_GETFL);
	fcntl(s, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* Reads until n bytes or EOF, with a poll timeout; returns bytes read. */
static inline __attribute__((unused)) size_t read_full(int s, char *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		struct pollfd p = { s, POLLIN, 0 };
		if (poll(&p, 1, 5000) <= 0)
			break;
		ssize_t r = read(s, buf + got, n - got);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	return got;
}

static inline __attribute__((unused)) int sockerr(int s)
{
	int e = -1;
	socklen_t l = sizeof e;

	if (getsockopt(s, SOL_SOCKET, SO_ERROR, &e, &l) < 0)
		return -errno;
	return e;
}

#endif
