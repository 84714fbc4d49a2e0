//go:build ignore

/*
 * socket.c: socket, bind, listen, accept, accept4, connect, getsockname,
 * getpeername, shutdown, close, dup*, close_range, closefrom, epoll_ctl.
 *
 * Where a socket goes is decided late. socket(AF_INET[6], TCP|UDP) makes a
 * real kernel socket marked PENDING. The first bind, connect, listen or
 * sendto that names a non-loopback address (or the wildcard, or listen on
 * an unbound socket) converts it: a socketpair end is dup3'ed onto the same
 * fd number, carrying FD_CLOEXEC, the file status flags (O_NONBLOCK,
 * O_ASYNC), the owner, SO_RCVTIMEO/SO_SNDTIMEO, the replayable options set
 * so far (opts.c) and the fd's epoll registration. A loopback address (by
 * default) settles it on the kernel for good. shim/README.md lists the edge
 * cases.
 */
#include "shim.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>


#define LOGADDR(buf, sa, len) mp_fmt_addr(buf, sizeof buf, sa, len)

static int ret_log(int rc, const char *call, int fd, const char *extra)
{
	if (__builtin_expect(mp_conf.log, 0)) {
		if (rc < 0)
			mp_log("%s(%d%s%s) = -1 %s", call, fd, extra ? ", " : "", extra ? extra : "",
			       mp_errname(errno));
		else
			mp_log("%s(%d%s%s) = %d", call, fd, extra ? ", " : "", extra ? extra : "", rc);
	}
	return rc;
}

/* ---- policy --------------------------------------------------------------- */

int mp_addr_kernel(const struct sockaddr *sa, socklen_t len)
{
	if (!sa || len < sizeof(sa_family_t))
		return 1;
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const void *)sa;
		return !mp_conf.loopback_ins && (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
		if (mp_conf.loopback_ins)
			return 0;
		if (IN6_IS_ADDR_LOOPBACK(a))
			return 1;
		return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
	}
	/* AF_UNSPEC (disconnect) and malformed addresses: the kernel answers. */
	return 1;
}

/* Whether a destination stays on the kernel: a loopback address, or (with
 * loopback on the kernel) the unspecified address, which Linux takes for
 * loopback in connect and sendto. */
int mp_dst_kernel(const struct sockaddr *sa, socklen_t len)
{
	if (mp_addr_kernel(sa, len))
		return 1;
	if (mp_conf.loopback_ins)
		return 0;
	if (sa->sa_family == AF_INET)
		return ((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr == 0;
	/* mp_addr_kernel has checked the family and length */
	const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
	return IN6_IS_ADDR_UNSPECIFIED(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr32[3] == 0);
}

/* ---- conversion ----------------------------------------------------------- */

/* Puts nfd in place of fd keeping what belongs to the descriptor and the
 * file: FD_CLOEXEC, status flags, owner, local timeouts. Closes nfd. */
static int replace(int fd, int nfd)
{
	int fdfl, fl, own, rc;
	struct timeval tv;
	socklen_t l;
	static const int timeouts[] = { SO_RCVTIMEO, SO_SNDTIMEO };

	fdfl = REAL(fcntl)(fd, F_GETFD);
	fl = REAL(fcntl)(fd, F_GETFL);
	own = REAL(fcntl)(fd, F_GETOWN);
	if (fdfl < 0 || fl < 0) {
		REAL(close)(nfd);
		return -1;
	}
	for (unsigned i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
		l = sizeof tv;
		if (REAL(getsockopt)(fd, SOL_SOCKET, timeouts[i], &tv, &l) == 0 &&
		    (tv.tv_sec || tv.tv_usec))
			REAL(setsockopt)(nfd, SOL_SOCKET, timeouts[i], &tv, l);
	}
	rc = REAL(dup3)(nfd, fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0);
	REAL(close)(nfd);
	if (rc < 0)
		return -1;
	REAL(fcntl)(fd, F_SETFL, fl & (O_NONBLOCK | O_ASYNC));
	if (own > 0)
		REAL(fcntl)(fd, F_SETOWN, own);
	return 0;
}

int mp_convert(int fd, struct mp_fd *e)
{
	int sv[2], rc, fl, fdfl, type, oflags;
	uint64_t sock = 0;

	rc = mps_available();
	if (rc == -MP_REFUSED_ERRNO)
		return mp_fail(MP_REFUSED_ERRNO);
	if (rc < 0) {
		if (mp_conf.fail_open)
			return 1;
		return mp_fail(MP_FAIL_ERRNO);
	}
	if (REAL(socketpair)(AF_UNIX, (e->type == SOCK_DGRAM ? SOCK_SEQPACKET : SOCK_STREAM) |
					      SOCK_CLOEXEC,
			     0, sv) < 0)
		return -1;
	fl = REAL(fcntl)(fd, F_GETFL);
	fdfl = REAL(fcntl)(fd, F_GETFD);
	type = e->type | (fl > 0 && (fl & O_NONBLOCK) ? SOCK_NONBLOCK : 0) |
	       (fdfl > 0 && (fdfl & FD_CLOEXEC) ? SOCK_CLOEXEC : 0);
	rc = mps_socket(e->domain, type, e->protocol, sv[1], &sock);
	REAL(close)(sv[1]);
	if (rc < 0) {
		REAL(close)(sv[0]);
		if (rc == -MP_FAIL_ERRNO && mp_conf.fail_open)
			return 1;
		return mp_fail(-rc);
	}
	oflags = mp_opt_replay(fd, e, sock, sv[0]);
	if (replace(fd, sv[0]) < 0)
		return -1;
	if (e->flags & MPF_EPOLL) {
		struct epoll_event ev = { .events = e->epevents };
		ev.data.u64 = e->epdata;
		if (REAL(epoll_ctl)(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
			MPLOG("convert(%d): epoll re-registration in %d failed: %s", fd, e->epfd,
			      mp_errname(errno));
	}
	e->kind = e->type == SOCK_DGRAM ? MPK_DGRAM : MPK_STREAM;
	e->sock = sock;
	e->flags = e->type == SOCK_DGRAM ? (uint8_t)(oflags & MPF_DGCTL) : (uint8_t)(MPF_UNATTACHED | oflags);
	e->optmask = 0;
	MPLOG("convert(%d) -> sock %llu", fd, (unsigned long long)sock);
	return 0;
}

/* Decides a pending socket for an operation on sa (a destination when dst
 * is set, else a local address): returns 1 when it stays on the kernel (the
 * entry is dropped), 0 when it is now INS, -1 on error with errno set. */
static int decide(int fd, struct mp_fd *e, const struct sockaddr *sa, socklen_t len, int dst)
{
	int rc;

	if (sa && (dst ? mp_dst_kernel(sa, len) : mp_addr_kernel(sa, len))) {
		memset(e, 0, sizeof *e);
		return 1;
	}
	rc = mp_convert(fd, e);
	if (rc == 1)
		memset(e, 0, sizeof *e);
	return rc;
}

/* ---- recv(MSG_TRUNC) on a stream ----------------------------------------- */

/* Linux's TCP does not copy the bytes a MSG_TRUNC recv takes (or, with
 * MSG_PEEK, would take); the app's AF_UNIX end would. The first read waits
 * as the app's recv would; the rest only takes what is queued. Not a hot
 * path: a stack buffer. */
ssize_t mp_stream_recv_trunc(int fd, size_t len, int flags)
{
	char scratch[4096];
	int fl = flags & ~MSG_TRUNC, avail = 0;
	size_t done = 0, want;
	ssize_t n;

	if (len == 0)
		return REAL(recv)(fd, scratch, 0, fl);
	if (fl & MSG_PEEK) {
		n = REAL(recv)(fd, scratch, 1, fl);
		if (n <= 0)
			return n;
		MP_SAVE;
		if (REAL(ioctl)(fd, FIONREAD, &avail) < 0 || avail < 1)
			avail = 1;
		MP_RESTORE;
		return (ssize_t)(len < (size_t)avail ? len : (size_t)avail);
	}
	while (done < len) {
		want = len - done < sizeof scratch ? len - done : sizeof scratch;
		if (done == 0) {
			n = REAL(recv)(fd, scratch, want, fl);
			if (n <= 0)
				return n;
		} else {
			MP_SAVE;
			n = REAL(recv)(fd, scratch, want, fl | MSG_DONTWAIT);
			MP_RESTORE;
			if (n <= 0)
				break;
		}
		done += (size_t)n;
		if ((size_t)n < want)
			break; /* took everything queued */
	}
	return (ssize_t)done;
}

/* ---- non-blocking connect ------------------------------------------------- */

static void restore_sndbuf(int fd, struct mp_fd *e)
{
	int v = e->sndbuf / 2;

	if (!(e->flags & MPF_FILLER))
		return;
	REAL(setsockopt)(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
	e->flags &= (uint8_t)~MPF_FILLER;
}

void mp_settle(int fd, struct mp_fd *e)
{
	int outq = -1;
	MP_SAVE;

	if ((e->flags & MPF_FILLER) && REAL(ioctl)(fd, SIOCOUTQ, &outq) == 0 && outq == 0)
		restore_sndbuf(fd, e);
	MP_RESTORE;
}

/* Makes the app's end unwritable: minimum SO_SNDBUF, then filler bytes
 * until EAGAIN. Returns the number of bytes written. */
static uint32_t fill(int fd, struct mp_fd *e)
{
	static const char zeros[2048];
	int v = 0, cur = 0;
	socklen_t l = sizeof cur;
	uint32_t n = 0;
	ssize_t w;

	if (REAL(getsockopt)(fd, SOL_SOCKET, SO_SNDBUF, &cur, &l) < 0)
		return 0;
	e->sndbuf = cur;
	e->flags |= MPF_FILLER;
	REAL(setsockopt)(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
	for (int i = 0; i < 256; i++) {
		w = REAL(send)(fd, zeros, sizeof zeros, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w <= 0)
			break;
		n += (uint32_t)w;
	}
	return n;
}

static int connect_stream(int fd, struct mp_fd *e, const struct sockaddr *sa, socklen_t len)
{
	int fl = REAL(fcntl)(fd, F_GETFL), rc;
	uint32_t n;

	if (fl < 0)
		return -1;
	if (!(fl & O_NONBLOCK)) {
		e->flags &= (uint8_t)~MPF_UNATTACHED;
		rc = mps_connect(e->sock, sa, len, 0, 0);
		restore_sndbuf(fd, e);
		return rc < 0 ? mp_fail(-rc) : 0;
	}
	if (!(e->flags & MPF_UNATTACHED)) {
		/* A connect after the first one (EALREADY, EISCONN, the
		 * outcome), or on an accepted or inherited socket: the INS end
		 * is already attached, filler would go into the stream. */
		rc = mps_connect(e->sock, sa, len, 1, 0);
		/* Established: SO_SNDBUF is restored once the INS has taken
		 * the filler, never before, or the app's first bytes could
		 * join the filler it discards. Failed: the INS end is gone. */
		if (rc == 0 || rc == -EISCONN)
			mp_settle(fd, e);
		else if (rc != -EALREADY && rc != -EINPROGRESS)
			restore_sndbuf(fd, e);
		return rc < 0 ? mp_fail(-rc) : 0;
	}
	if ((rc = mps_available()) < 0)
		return mp_fail(rc == -MP_REFUSED_ERRNO ? MP_REFUSED_ERRNO : MP_FAIL_ERRNO);
	e->flags &= (uint8_t)~MPF_UNATTACHED;
	n = fill(fd, e);
	rc = mps_connect(e->sock, sa, len, 1, n);
	/* Any answer but EINPROGRESS means the INS has discarded the filler. */
	if (rc != -EINPROGRESS)
		restore_sndbuf(fd, e);
	return rc < 0 ? mp_fail(-rc) : 0;
}

/* ---- listener keepers (shim.h) ---------------------------------------- */

/* The keeper of listener entry e, if it still is one (a range close may
 * have taken it). */
static struct mp_fd *keeper_of(const struct mp_fd *e)
{
	struct mp_fd *k;

	if (e->kind != MPK_LISTEN || e->keep <= 0)
		return NULL;
	k = mp_get(e->keep);
	if (!k || k->kind != MPK_INTERNAL || k->type != MP_INTERNAL_KEEP || k->sock != e->sock)
		return NULL;
	return k;
}

void mp_keep_release(int fd, struct mp_fd *e)
{
	int keep = e->keep;
	MP_SAVE;

	if (!keeper_of(e)) {
		MP_RESTORE;
		return;
	}
	for (unsigned int i = 0; i < mp_table_hiwat && i < mp_table_size; i++)
		if ((int)i != fd && mp_table[i].kind == MPK_LISTEN && mp_table[i].keep == keep) {
			MP_RESTORE;
			return;
		}
	mp_clear(keep);
	REAL(close)(keep);
	MP_RESTORE;
}

void mp_keep_evict(int fd)
{
	struct mp_fd *k = mp_get(fd), *nk;
	int nfd;
	MP_SAVE;

	if (!k || k->kind != MPK_INTERNAL || k->type != MP_INTERNAL_KEEP) {
		MP_RESTORE;
		return;
	}
	nfd = REAL(fcntl)(fd, F_DUPFD_CLOEXEC, fd + 1);
	if (nfd >= 0 && (nk = mp_slot(nfd))) {
		*nk = *k;
		for (unsigned int i = 0; i < mp_table_hiwat && i < mp_table_size; i++)
			if (mp_table[i].kind == MPK_LISTEN && mp_table[i].keep == fd)
				mp_table[i].keep = nfd;
	} else if (nfd >= 0) {
		REAL(close)(nfd);
	}
	memset(k, 0, sizeof *k);
	REAL(close)(fd);
	MP_RESTORE;
}

void mp_keep_forget_range(unsigned int first, unsigned int last)
{
	for (unsigned int i = first; i <= last && i < mp_table_hiwat && i < mp_table_size; i++)
		if (mp_table[i].kind == MPK_INTERNAL && mp_table[i].type == MP_INTERNAL_KEEP)
			memset(&mp_table[i], 0, sizeof mp_table[i]);
}

/* ---- listen and accept ---------------------------------------------------- */

/* Records what mp_relisten needs to make listener e again: its address
 * and the options that decide whether the bind succeeds. */
static void note_listener(struct mp_fd *e)
{
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} a;
	socklen_t len = sizeof a;
	int v = 0;
	socklen_t vl = sizeof v;
	MP_SAVE;

	if (mps_getname(e->sock, 0, &a.sa, &len) == 0) {
		if (a.sa.sa_family == AF_INET) {
			memcpy(e->laddr, &a.in.sin_addr, 4);
			e->lport = ntohs(a.in.sin_port);
			e->lflags |= MPL_BOUND;
		} else if (a.sa.sa_family == AF_INET6) {
			memcpy(e->laddr, &a.in6.sin6_addr, 16);
			e->lport = ntohs(a.in6.sin6_port);
			e->lflags |= MPL_BOUND;
		}
	}
	if (e->domain == AF_INET6 && mps_getsockopt(e->sock, IPPROTO_IPV6, IPV6_V6ONLY, &v, &vl) == 0 && v)
		e->lflags |= MPL_V6ONLY;
	v = 0;
	vl = sizeof v;
	if (mps_getsockopt(e->sock, SOL_SOCKET, SO_REUSEPORT, &v, &vl) == 0 && v)
		e->lflags |= MPL_REUSEPORT;
	MP_RESTORE;
}

/* Makes listener e (keeper k) again under the current session; 0 or
 * -errno. */
static int relisten_one(struct mp_fd *e, int k)
{
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} a;
	socklen_t len;
	uint64_t sock;
	int sv[2], one = 1, rc, kd;

	memset(&a, 0, sizeof a);
	if (e->domain == AF_INET) {
		a.in.sin_family = AF_INET;
		a.in.sin_port = htons(e->lport);
		memcpy(&a.in.sin_addr, e->laddr, 4);
		len = sizeof a.in;
	} else {
		a.in6.sin6_family = AF_INET6;
		a.in6.sin6_port = htons(e->lport);
		memcpy(&a.in6.sin6_addr, e->laddr, 16);
		len = sizeof a.in6;
	}
	if (REAL(socketpair)(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	rc = mps_socket(e->domain, SOCK_STREAM | SOCK_NONBLOCK, e->protocol, sv[1], &sock);
	REAL(close)(sv[1]);
	REAL(close)(sv[0]);
	if (rc < 0)
		return rc;
	mps_setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (e->lflags & MPL_REUSEPORT)
		mps_setsockopt(sock, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	if (e->lflags & MPL_V6ONLY)
		mps_setsockopt(sock, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	if ((rc = mps_bind(sock, &a.sa, len)) < 0)
		goto fail;
	kd = REAL(fcntl)(k, F_DUPFD_CLOEXEC, 0);
	if (kd < 0) {
		rc = -errno;
		goto fail;
	}
	rc = mps_listen(sock, e->optmask ? (int)e->optmask : 511, kd);
	REAL(close)(kd);
	if (rc < 0)
		goto fail;
	e->sock = sock;
	return 0;
fail:
	mps_close(sock);
	return rc;
}

void mp_relisten(void)
{
	MP_SAVE;

	for (unsigned int fd = 0; fd < mp_table_hiwat && fd < mp_table_size; fd++) {
		struct mp_fd *e = &mp_table[fd], *k = keeper_of(e);
		uint64_t old;
		int rc;

		if (!k || !(e->lflags & MPL_BOUND))
			continue;
		old = e->sock;
		rc = relisten_one(e, e->keep);
		if (rc < 0) {
			/* Another process of the group made it first (they share
			 * the listener and its keeper's file): the listener is
			 * served all the same. */
			MPLOG("relisten(%u): %s", fd, mp_errname(-rc));
			continue;
		}
		k->sock = e->sock;
		/* The other descriptors of the same listener. */
		for (unsigned int i = fd + 1; i < mp_table_hiwat && i < mp_table_size; i++)
			if (mp_table[i].kind == MPK_LISTEN && mp_table[i].sock == old)
				mp_table[i].sock = e->sock;
		MPLOG("relisten(%u): socket %llu", fd, (unsigned long long)e->sock);
	}
	MP_RESTORE;
}

static int listen_ins(int fd, struct mp_fd *e, int backlog)
{
	int sv[2], rc, keep;
	struct mp_fd *k;

	if (REAL(socketpair)(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	rc = mps_listen(e->sock, backlog, sv[1]);
	if (rc < 0) {
		REAL(close)(sv[1]);
		REAL(close)(sv[0]);
		return mp_fail(-rc);
	}
	if (replace(fd, sv[0]) < 0) {
		REAL(close)(sv[1]);
		return -1;
	}
	e->kind = MPK_LISTEN;
	e->keep = 0;
	e->lflags = 0;
	e->optmask = (uint32_t)backlog;
	note_listener(e);
	/* The keeper: the far end stays open here as long as the listener,
	 * so the listener never reads end-of-file when the isolator and its
	 * INS are gone; accept then just waits (or says EAGAIN). */
	keep = mps_high_fd(sv[1]);
	if ((k = mp_slot(keep))) {
		memset(k, 0, sizeof *k);
		k->kind = MPK_INTERNAL;
		k->type = MP_INTERNAL_KEEP;
		k->sock = e->sock;
		e->keep = keep;
	} else {
		REAL(close)(keep);
	}
	return 0;
}

/* Wakes one thread blocked in accept on listener e: a one-byte message,
 * which no isolator message is, sent through its keeper (the far end of the
 * SEQPACKET pair, in this process) to its own end. 0, or -1 if e has no
 * keeper. */
static int listen_wake(struct mp_fd *e)
{
	static const char wake = 'W';

	if (!keeper_of(e))
		return -1;
	REAL(send)(e->keep, &wake, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
	return 0;
}

/* Sets or clears MPL_SHUT on every descriptor of listener sock. */
static void listen_mark_shut(uint64_t sock, int shut)
{
	for (unsigned int i = 0; i < mp_table_hiwat && i < mp_table_size; i++) {
		struct mp_fd *l = &mp_table[i];

		if (l->kind != MPK_LISTEN || l->sock != sock)
			continue;
		if (shut)
			l->lflags |= MPL_SHUT;
		else
			l->lflags &= (uint8_t)~MPL_SHUT;
	}
}

/* Reads the stale wake-ups at the head of listener fd's queue, once it
 * listens again. */
static void drop_wakes(int fd)
{
	char c;

	for (int k = 0; k < 64; k++) {
		if (REAL(recv)(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC) != 1)
			return;
		if (REAL(recv)(fd, &c, 1, MSG_DONTWAIT) != 1)
			return;
	}
}

/* Receives one message of a listener's SEQPACKET end into buf (at least
 * MPS_ACCEPT_MSG_MAX bytes): *nfd is the first descriptor it passed (-1 if
 * none; any others are closed), *ctl whether it had control data at all,
 * *mflags its msg_flags. Returns recvmsg's result. */
static ssize_t recv_accept_msg(int fd, unsigned char *buf, int rflags, int *nfd, int *ctl, int *mflags)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 4)];
	} cm;
	struct iovec iov = { buf, MPS_ACCEPT_MSG_MAX };
	struct msghdr mh;
	struct cmsghdr *c;
	ssize_t n;

	memset(&mh, 0, sizeof mh);
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cm.b;
	mh.msg_controllen = sizeof cm.b;
	*nfd = -1;
	n = REAL(recvmsg)(fd, &mh, rflags);
	if (n <= 0)
		return n;
	*ctl = CMSG_FIRSTHDR(&mh) != NULL;
	*mflags = mh.msg_flags;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int f;
			memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
			if (*nfd < 0)
				*nfd = f;
			else
				REAL(close)(f);
		}
	}
	return n;
}

static int accept_ins(int fd, struct mp_fd *e, struct sockaddr *sa, socklen_t *len, int flags)
{
	unsigned char buf[MPS_ACCEPT_MSG_MAX];
	const unsigned char *peer, *local;
	uint64_t sock;
	ssize_t n;
	int nfd, ctl, mflags, bad;
	struct mp_fd *ne;

	if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC))
		return mp_fail(EINVAL);
	if (e->lflags & MPL_SHUT)
		return mp_fail(EINVAL);
again:
	n = recv_accept_msg(fd, buf, (flags & SOCK_CLOEXEC) ? MSG_CMSG_CLOEXEC : 0, &nfd, &ctl, &mflags);
	if (n < 0)
		return -1;
	if (n == 0)
		return mp_fail(EINVAL); /* no INS serves this listener any more */
	if (n == 1 && !ctl) {
		/* A wake-up from shutdown (listen_wake): the listener was
		 * shut down while this thread waited; the next waiting thread
		 * is woken in turn. One that comes after listen(2) again is
		 * stale. */
		if (!(e->lflags & MPL_SHUT))
			goto again;
		MP_SAVE;
		listen_wake(e);
		MP_RESTORE;
		return mp_fail(EINVAL);
	}
	bad = (mflags & (MSG_TRUNC | MSG_CTRUNC)) || nfd < 0 ||
	      mps_accept_parse(buf, (size_t)n, &sock, &peer, &local) < 0;
	if (bad) {
		if (nfd >= 0)
			REAL(close)(nfd);
		return mp_fail(ECONNABORTED);
	}
	if (flags & SOCK_NONBLOCK) {
		int fl = REAL(fcntl)(nfd, F_GETFL);
		REAL(fcntl)(nfd, F_SETFL, (fl < 0 ? 0 : fl) | O_NONBLOCK);
	}
	if (sock == 0) {
		/* A kernel connection (the isolator's loopback listener for a
		 * wildcard listener): the descriptor is the kernel's socket.
		 * The isolator hands it over with SO_LINGER {1, 0}, so that a
		 * listener closed before accepting it resets it as Linux resets
		 * its accept queue; accepted, it closes normally again. */
		struct linger lg;
		socklen_t ll = sizeof lg;
		MP_SAVE;
		if (REAL(getsockopt)(nfd, SOL_SOCKET, SO_LINGER, &lg, &ll) == 0 && lg.l_onoff &&
		    !lg.l_linger) {
			lg.l_onoff = 0;
			REAL(setsockopt)(nfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		}
		MP_RESTORE;
		mp_clear(nfd);
	} else if ((ne = mp_slot(nfd))) {
		memset(ne, 0, sizeof *ne);
		ne->kind = MPK_STREAM;
		ne->domain = e->domain;
		ne->type = SOCK_STREAM;
		ne->protocol = e->protocol;
		ne->sock = sock;
	}
	if (len)
		mps_addr_get(peer, sa, len);
	(void)local;
	return nfd;
}

/* ---- interposers ---------------------------------------------------------- */

MP_EXPORT int socket(int domain, int type, int protocol)
{
	int fd = REAL(socket)(domain, type, protocol), base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
	struct mp_fd *e;
	MP_SAVE;

	if (fd >= 0) {
		if ((domain == AF_INET || domain == AF_INET6) &&
		    ((base == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP)) ||
		     (base == SOCK_DGRAM && (protocol == 0 || protocol == IPPROTO_UDP))) &&
		    (e = mp_slot(fd))) {
			memset(e, 0, sizeof *e);
			e->kind = MPK_PENDING;
			e->domain = (uint16_t)domain;
			e->type = base;
			e->protocol = protocol;
		} else {
			mp_clear(fd);
		}
	}
	MPLOG("socket(%d, %#x, %d) = %d%s%s", domain, type, protocol, fd, fd < 0 ? " " : "",
	      fd < 0 ? mp_errname(mp_saved_errno_) : "");
	MP_RESTORE;
	return fd;
}

MP_EXPORT int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct mp_fd *e = mp_get(fd);
	char a[64];
	int rc;

	if (!e || e->kind == MPK_INTERNAL) {
		rc = e ? mp_fail(EBADF) : REAL(bind)(fd, sa, len);
		return ret_log(rc, "bind", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
	}
	if (e->kind == MPK_PENDING && sa && len >= sizeof(sa_family_t) && sa->sa_family != e->domain &&
	    sa->sa_family != AF_UNSPEC) {
		/* An address of the other family: the kernel refuses it as
		 * Linux does (EINVAL for a short IPv6 address, else
		 * EAFNOSUPPORT) and the socket stays undecided. */
		rc = REAL(bind)(fd, sa, len);
		if (rc == 0)
			memset(e, 0, sizeof *e);
		return ret_log(rc, "bind", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
	}
	if (e->kind == MPK_PENDING) {
		rc = decide(fd, e, sa, len, 0);
		if (rc) {
			if (rc > 0)
				rc = REAL(bind)(fd, sa, len);
			return ret_log(rc, "bind", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
		}
	}
	if (sa && len >= sizeof(sa_family_t) && sa->sa_family != e->domain && sa->sa_family != AF_UNSPEC) {
		/* Linux checks the length for the socket's family first. */
		socklen_t min = e->domain == AF_INET6 ? 24 /* SIN6_LEN_RFC2133 */ : sizeof(struct sockaddr_in);
		rc = mp_fail(len < min ? EINVAL : EAFNOSUPPORT);
		return ret_log(rc, "bind[ins]", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
	}
	rc = mps_bind(e->sock, sa, len);
	rc = rc < 0 ? mp_fail(-rc) : 0;
	return ret_log(rc, "bind[ins]", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
}

MP_EXPORT int listen(int fd, int backlog)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	if (!e || e->kind == MPK_INTERNAL) {
		rc = e ? mp_fail(EBADF) : REAL(listen)(fd, backlog);
		return ret_log(rc, "listen", fd, NULL);
	}
	switch (e->kind) {
	case MPK_PENDING:
		if (e->type != SOCK_STREAM) {
			rc = REAL(listen)(fd, backlog);
			break;
		}
		rc = decide(fd, e, NULL, 0, 0);
		if (rc > 0)
			rc = REAL(listen)(fd, backlog);
		else if (rc == 0)
			rc = listen_ins(fd, e, backlog);
		break;
	case MPK_STREAM:
		rc = listen_ins(fd, e, backlog);
		break;
	case MPK_LISTEN:
		rc = mps_listen(e->sock, backlog, -1);
		if (rc == 0) {
			e->optmask = (uint32_t)backlog;
			if (e->lflags & MPL_SHUT) {
				MP_SAVE;
				listen_mark_shut(e->sock, 0);
				drop_wakes(fd);
				MP_RESTORE;
			}
		}
		rc = rc < 0 ? mp_fail(-rc) : 0;
		break;
	default:
		rc = mp_fail(EOPNOTSUPP);
	}
	return ret_log(rc, "listen", fd, NULL);
}

MP_EXPORT int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	if (e && e->kind == MPK_LISTEN)
		rc = accept_ins(fd, e, sa, len, flags);
	else if (e && e->kind == MPK_INTERNAL)
		rc = mp_fail(EBADF);
	else {
		rc = REAL(accept4)(fd, sa, len, flags);
		if (rc >= 0) {
			MP_SAVE;
			mp_clear(rc);
			MP_RESTORE;
		}
	}
	return ret_log(rc, "accept4", fd, NULL);
}

MP_EXPORT int accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	if (e && e->kind == MPK_LISTEN)
		rc = accept_ins(fd, e, sa, len, 0);
	else if (e && e->kind == MPK_INTERNAL)
		rc = mp_fail(EBADF);
	else {
		rc = REAL(accept)(fd, sa, len);
		if (rc >= 0) {
			MP_SAVE;
			mp_clear(rc);
			MP_RESTORE;
		}
	}
	return ret_log(rc, "accept", fd, NULL);
}

/* Options of an INS UDP socket that a kernel socket taking its place gets
 * before its bind: the ones that decide whether the bind shares the port
 * and what the socket receives and sends. */
static const struct {
	int level, name;
} dgram_carried[] = {
	{ SOL_SOCKET, SO_REUSEADDR }, { SOL_SOCKET, SO_REUSEPORT }, { SOL_SOCKET, SO_BROADCAST },
	{ SOL_SOCKET, SO_RCVBUF },    { SOL_SOCKET, SO_SNDBUF },    { IPPROTO_IP, IP_TTL },
	{ IPPROTO_IP, IP_TOS },       { IPPROTO_IP, IP_MULTICAST_TTL },
	{ IPPROTO_IP, IP_MULTICAST_LOOP },
};

/* Moves a UDP socket the INS serves, bound to the wildcard, to a kernel
 * socket bound to the wildcard with the same port (carrying the options
 * above) and, when sa is set, connected there. That is where Linux has it
 * when it connects to a destination of the kernel (loopback on the kernel:
 * Linux sends from the loopback then) or joins a multicast group on the
 * loopback (a socket bound to a multicast group moves then too). Returns 0
 * when moved, -1 when the INS keeps it (bound elsewhere, or the kernel
 * refused). */
int mp_dgram_to_kernel(int fd, struct mp_fd *e, const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int ks, v;
	socklen_t vl;
	MP_SAVE;

	if (e->kind != MPK_DGRAM || (sa && (len < sizeof(sa_family_t) || sa->sa_family == AF_UNSPEC ||
					    !mp_dst_kernel(sa, len))) ||
	    mps_getname(e->sock, 0, (struct sockaddr *)&ss, &sl) < 0)
		goto keep;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		if ((in->sin_addr.s_addr != 0 && (sa || !IN_MULTICAST(ntohl(in->sin_addr.s_addr)))) ||
		    in->sin_port == 0)
			goto keep;
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		if ((!IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) && (sa || !IN6_IS_ADDR_MULTICAST(&in6->sin6_addr))) ||
		    in6->sin6_port == 0)
			goto keep;
	} else {
		goto keep;
	}
	ks = REAL(socket)(e->domain, SOCK_DGRAM | SOCK_CLOEXEC, e->protocol);
	if (ks < 0)
		goto keep;
	for (unsigned i = 0; i < sizeof dgram_carried / sizeof dgram_carried[0]; i++) {
		if (dgram_carried[i].level == IPPROTO_IP && e->domain != AF_INET)
			continue;
		vl = sizeof v;
		if (mps_getsockopt(e->sock, dgram_carried[i].level, dgram_carried[i].name, &v, &vl) < 0 ||
		    vl != sizeof v)
			continue;
		if (dgram_carried[i].level == SOL_SOCKET &&
		    (dgram_carried[i].name == SO_RCVBUF || dgram_carried[i].name == SO_SNDBUF))
			v /= 2; /* reported doubled, as Linux does */
		REAL(setsockopt)(ks, dgram_carried[i].level, dgram_carried[i].name, &v, sizeof v);
	}
	if (REAL(bind)(ks, (struct sockaddr *)&ss, sl) < 0 || (sa && REAL(connect)(ks, sa, len) < 0)) {
		REAL(close)(ks);
		goto keep;
	}
	if (replace(fd, ks) < 0)
		goto keep;
	memset(e, 0, sizeof *e);
	MP_RESTORE;
	return 0;
keep:
	MP_RESTORE;
	return -1;
}

MP_EXPORT int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct mp_fd *e = mp_get(fd);
	char a[64];
	int rc;

	if (!e || e->kind == MPK_INTERNAL) {
		rc = e ? mp_fail(EBADF) : REAL(connect)(fd, sa, len);
		return ret_log(rc, "connect", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
	}
	if (e->kind == MPK_PENDING) {
		if (sa && len >= sizeof(sa_family_t) && sa->sa_family == AF_UNSPEC) {
			rc = REAL(connect)(fd, sa, len); /* UDP disconnect: still undecided */
			return ret_log(rc, "connect", fd, "unspec");
		}
		rc = decide(fd, e, sa, len, 1);
		if (rc) {
			if (rc > 0)
				rc = REAL(connect)(fd, sa, len);
			return ret_log(rc, "connect", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
		}
	}
	if (e->kind == MPK_DGRAM && sa && mp_dgram_to_kernel(fd, e, sa, len) == 0)
		return ret_log(0, "connect[kernel]", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
	if (e->kind == MPK_STREAM) {
		rc = connect_stream(fd, e, sa, len);
	} else {
		rc = mps_connect(e->sock, sa, len, 0, 0);
		rc = rc < 0 ? mp_fail(-rc) : 0;
	}
	return ret_log(rc, "connect[ins]", fd, mp_conf.log ? LOGADDR(a, sa, len) : NULL);
}

static int getname(int fd, struct sockaddr *sa, socklen_t *len, int peer)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	if (!e || e->kind == MPK_PENDING)
		rc = peer ? REAL(getpeername)(fd, sa, len) : REAL(getsockname)(fd, sa, len);
	else if (e->kind == MPK_INTERNAL)
		rc = mp_fail(EBADF);
	else if (!len)
		rc = mp_fail(EFAULT);
	else {
		if (e->flags & MPF_FILLER)
			mp_settle(fd, e);
		rc = mps_getname(e->sock, peer, sa, len);
		rc = rc < 0 ? mp_fail(-rc) : 0;
	}
	if (__builtin_expect(mp_conf.log, 0)) {
		char a[64];
		MP_SAVE;
		mp_log("%s(%d) = %d %s", peer ? "getpeername" : "getsockname", fd, rc,
		       rc < 0 ? mp_errname(errno) : mp_fmt_addr(a, sizeof a, sa, len ? *len : 0));
		MP_RESTORE;
	}
	return rc;
}

MP_EXPORT int getsockname(int fd, struct sockaddr *sa, socklen_t *len)
{
	return getname(fd, sa, len, 0);
}

MP_EXPORT int getpeername(int fd, struct sockaddr *sa, socklen_t *len)
{
	return getname(fd, sa, len, 1);
}

/* Closes every connection queued on listener fd's SEQPACKET end: a kernel
 * connection of the isolator's loopback listener is reset (it comes with
 * SO_LINGER {1, 0}), an INS one is closed by its INS once the app's end is. */
static void drop_queued(int fd)
{
	unsigned char buf[MPS_ACCEPT_MSG_MAX];
	int nfd, ctl, mflags;

	for (int k = 0; k < 4096; k++) {
		if (recv_accept_msg(fd, buf, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, &nfd, &ctl, &mflags) <= 0)
			return;
		if (nfd >= 0)
			REAL(close)(nfd);
	}
}

MP_EXPORT int shutdown(int fd, int how)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	if (!e || e->kind == MPK_PENDING) {
		rc = REAL(shutdown)(fd, how);
	} else if (e->kind == MPK_INTERNAL) {
		rc = mp_fail(EBADF);
	} else {
		if (e->flags & MPF_FILLER)
			mp_settle(fd, e);
		rc = mps_shutdown(e->sock, how);
		if (rc < 0) {
			rc = mp_fail(-rc);
		} else if (e->kind == MPK_LISTEN && how != SHUT_WR) {
			/* Resets the connections not yet accepted, as Linux
			 * resets its accept queue, then wakes the threads
			 * blocked in accept, which say EINVAL, as does every
			 * accept until listen(2) again. The end itself stays
			 * open both ways, so that the INS can hand over
			 * connections again after that listen. Without a
			 * keeper to send the wake-up through, the end's read
			 * half is shut (for good). */
			MP_SAVE;
			drop_queued(fd);
			listen_mark_shut(e->sock, 1);
			if (listen_wake(e) < 0)
				REAL(shutdown)(fd, SHUT_RD);
			MP_RESTORE;
		} else if (e->kind == MPK_DGRAM && how != SHUT_RD) {
			/* Every later send must fail with EPIPE at once: none
			 * takes the socketpair (dgram.c) without the ring. */
			e->flags &= (uint8_t)~(MPF_DGPEER | MPF_DEST4 | MPF_DEST6);
		} else if (e->kind == MPK_STREAM && how != SHUT_RD) {
			/* The stream's own end carries the half-close in order
			 * after the bytes already written. Only the write half:
			 * a read shutdown of this end would hang up the INS end
			 * once the write half is shut too, which the INS takes
			 * for the last close. The INS ends the read side. */
			MP_SAVE;
			REAL(shutdown)(fd, SHUT_WR);
			MP_RESTORE;
		}
	}
	return ret_log(rc, "shutdown", fd, how == SHUT_RD ? "RD" : how == SHUT_WR ? "WR" : "RDWR");
}

/* Whether closing stream fd (sock) should be reported to the isolator: the
 * kernel tells the INS when the last descriptor of a stream goes, except
 * after both directions were shut (the app's shutdown(SHUT_WR) and the
 * peer's FIN), when the INS end already hangs up, or once the INS has
 * closed its end (reset, both FINs): then the app's end hangs up too, and
 * only this close can end the INS's record of the socket. Another
 * descriptor of the same socket in this process keeps it; one held by
 * another process cannot be seen from here, and its later calls on the
 * finished socket fail as on a socket the INS no longer knows. */
static int close_reports(int fd, uint64_t sock)
{
	struct pollfd p = { .fd = fd, .events = 0 };

	if (poll(&p, 1, 0) != 1 || !(p.revents & POLLHUP))
		return 0;
	for (unsigned int i = 0; i < mp_table_hiwat && i < mp_table_size; i++)
		if ((int)i != fd && mp_table[i].kind == MPK_STREAM && mp_table[i].sock == sock)
			return 0;
	return 1;
}

/* The socket whose descriptor fd is about to be closed (by close, by dup2
 * or dup3 onto it, or by close_range), if this close must tell the INS
 * (close_reports); 0 otherwise. */
static uint64_t closing_stream(int fd)
{
	struct mp_fd *e = mp_get(fd);
	uint64_t sock = 0;
	MP_SAVE;

	if (e && e->kind == MPK_STREAM && close_reports(fd, e->sock))
		sock = e->sock;
	MP_RESTORE;
	return sock;
}

/* Tells the INS that sock (from closing_stream) is closed, once the close
 * succeeded. */
static void closed_stream(uint64_t sock, int rc)
{
	if (sock && rc == 0) {
		MP_SAVE;
		mps_close(sock);
		MP_RESTORE;
	}
}

MP_EXPORT int close(int fd)
{
	struct mp_fd *e = mp_get(fd);
	uint64_t sock = 0;
	int rc;

	if (e) {
		if (e->kind == MPK_INTERNAL)
			return ret_log(mp_fail(EBADF), "close", fd, NULL);
		sock = closing_stream(fd);
		if (e->kind == MPK_LISTEN)
			mp_keep_release(fd, e);
		/* Before the real close: the number may be reused at once. */
		memset(e, 0, sizeof *e);
	}
	rc = REAL(close)(fd);
	closed_stream(sock, rc);
	if (__builtin_expect(mp_conf.log, 0))
		ret_log(rc, "close", fd, NULL);
	return rc;
}

MP_EXPORT int dup(int fd)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	if (e && e->kind == MPK_INTERNAL)
		return ret_log(mp_fail(EBADF), "dup", fd, NULL);
	rc = REAL(dup)(fd);
	if (rc >= 0) {
		MP_SAVE;
		mp_copy(fd, rc);
		MP_RESTORE;
	}
	return ret_log(rc, "dup", fd, NULL);
}

static int dup23(int oldfd, int newfd, int flags, int three)
{
	struct mp_fd *e = mp_get(oldfd);
	uint64_t sock = 0;
	int rc;
	MP_SAVE;

	if (e && e->kind == MPK_INTERNAL)
		return mp_fail(EBADF);
	if (mps_is_internal_fd(newfd))
		mps_evict(newfd);
	mp_keep_evict(newfd);
	/* Duplicating onto newfd closes what it was (not when it is oldfd:
	 * dup2 then changes nothing, dup3 fails). */
	if (oldfd != newfd) {
		struct mp_fd *ne = mp_get(newfd);

		sock = closing_stream(newfd);
		if (ne && ne->kind == MPK_LISTEN && e != ne)
			mp_keep_release(newfd, ne);
	}
	MP_RESTORE;
	rc = three ? REAL(dup3)(oldfd, newfd, flags) : REAL(dup2)(oldfd, newfd);
	if (rc >= 0) {
		MP_SAVE;
		mp_copy(oldfd, newfd);
		MP_RESTORE;
	}
	closed_stream(sock, rc >= 0 ? 0 : -1);
	return rc;
}

MP_EXPORT int dup2(int oldfd, int newfd)
{
	char a[16];
	int rc = dup23(oldfd, newfd, 0, 0);

	if (mp_conf.log)
		snprintf(a, sizeof a, "%d", newfd);
	return ret_log(rc, "dup2", oldfd, mp_conf.log ? a : NULL);
}

MP_EXPORT int dup3(int oldfd, int newfd, int flags)
{
	char a[16];
	int rc = dup23(oldfd, newfd, flags, 1);

	if (mp_conf.log)
		snprintf(a, sizeof a, "%d", newfd);
	return ret_log(rc, "dup3", oldfd, mp_conf.log ? a : NULL);
}

/* Closes [first, last] natively, stepping around the registration fd. */
static int close_span(unsigned int first, unsigned int last, int flags)
{
	int reg = mps_internal_fd(), rc = 0;

	if (reg < 0 || (unsigned int)reg < first || (unsigned int)reg > last ||
	    (flags & CLOSE_RANGE_CLOEXEC))
		return REAL(close_range)(first, last, flags);
	if ((unsigned int)reg > first)
		rc = REAL(close_range)(first, (unsigned int)reg - 1, flags);
	if (rc == 0 && (unsigned int)reg < last)
		rc = REAL(close_range)((unsigned int)reg + 1, last, flags);
	return rc;
}

/* Closes the stream sockets among [first, last] one by one through close,
 * which tells the INS of those it must hear of (close_reports; the last of
 * several descriptors of one socket reports it), before the rest of the
 * range is closed natively. */
static void close_streams(unsigned int first, unsigned int last)
{
	for (unsigned int fd = first; fd <= last && fd < mp_table_hiwat && fd < mp_table_size; fd++) {
		if (mp_table[fd].kind == MPK_STREAM)
			close((int)fd);
	}
}

MP_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
	int rc;

	if (first > last)
		return ret_log(mp_fail(EINVAL), "close_range", (int)first, NULL);
	if (!(flags & CLOSE_RANGE_CLOEXEC)) {
		MP_SAVE;
		close_streams(first, last);
		mp_keep_forget_range(first, last);
		mp_clear_range(first, last);
		MP_RESTORE;
	}
	rc = close_span(first, last, flags);
	return ret_log(rc, "close_range", (int)first, NULL);
}

MP_EXPORT void closefrom(int lowfd)
{
	MP_SAVE;
	if (lowfd >= 0) {
		close_streams((unsigned int)lowfd, ~0u);
		mp_keep_forget_range((unsigned int)lowfd, ~0u);
		mp_clear_range((unsigned int)lowfd, ~0u);
		close_span((unsigned int)lowfd, ~0u, 0);
	}
	MPLOG("closefrom(%d)", lowfd);
	MP_RESTORE;
}

MP_EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	int rc = REAL(epoll_ctl)(epfd, op, fd, ev);
	struct mp_fd *e;

	if (rc == 0 && (e = mp_get(fd)) && e->kind == MPK_PENDING) {
		if (op == EPOLL_CTL_DEL) {
			if (e->epfd == epfd)
				e->flags &= (uint8_t)~MPF_EPOLL;
		} else if (ev) {
			e->flags |= MPF_EPOLL;
			e->epfd = epfd;
			e->epevents = ev->events;
			e->epdata = ev->data.u64;
		}
	}
	if (__builtin_expect(mp_conf.log, 0)) {
		char a[32];
		snprintf(a, sizeof a, "op %d, fd %d", op, fd);
		ret_log(rc, "epoll_ctl", epfd, a);
	}
	return rc;
}
