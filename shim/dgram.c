//go:build ignore

/*
 * dgram.c: send, recv, sendto, recvfrom, sendmsg, recvmsg, sendmmsg,
 * recvmmsg, read, write, readv, writev and their _FORTIFY aliases.
 *
 * A foreign fd, a pending (kernel) socket and an INS stream socket go to the
 * real function after one table lookup; on an INS stream socket a
 * destination address is dropped and no source address is reported, as TCP
 * does. An INS UDP socket frames every datagram on its SEQPACKET pair
 * (docs/protocol.md): one message = msgproto Datagram framing + payload,
 * so readiness, MSG_PEEK, MSG_DONTWAIT and MSG_TRUNC are the kernel's own.
 * read, write, readv and writev are interposed for that framing alone: on
 * every other fd (streams included) they are the real call after one
 * table lookup.
 *
 * Sending: errors of a datagram written to the socketpair can only be
 * reported later (SO_ERROR), but sendto must fail at once when there is no
 * route (ENETUNREACH), no destination (EDESTADDRREQ), and so on. So a
 * datagram goes through the ring (SendTo, synchronous errno) unless its
 * destination is the one the last successful ring send of this fd went to,
 * or it has no destination and a send to the connected peer has succeeded
 * since the last connect of the process (mps_connect_gen). The steady
 * state -- a connected socket, or a socket talking to one peer -- takes the
 * socketpair after its first datagram. Two threads sending on one fd may
 * race on the cache; the worst outcome is one datagram whose error is
 * reported asynchronously.
 */
#include "shim.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int warned_cmsg;

static int log_io(ssize_t rc, const char *call, int fd, size_t len)
{
	if (__builtin_expect(mp_conf.log, 0)) {
		MP_SAVE;
		if (rc < 0)
			mp_log("%s(%d, %zu) = -1 %s", call, fd, len, mp_errname(errno));
		else
			mp_log("%s(%d, %zu) = %zd", call, fd, len, rc);
		MP_RESTORE;
	}
	return 0;
}

/* Is sa the destination cached in e? */
static int dest_cached(const struct mp_fd *e, const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;
		return (e->flags & MPF_DEST4) && e->dest.port == ntohs(in->sin_port) &&
		       memcmp(e->dest.addr, &in->sin_addr, 4) == 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		return (e->flags & MPF_DEST6) && e->dest.port == ntohs(in6->sin6_port) &&
		       e->dest.scope == in6->sin6_scope_id &&
		       memcmp(e->dest.addr, &in6->sin6_addr, 16) == 0;
	}
	return 0;
}

/* Remembers sa as a validated destination of e (NULL: the connected peer,
 * validated under connect generation gen). */
static void dest_store(struct mp_fd *e, const struct sockaddr *sa, uint16_t gen)
{
	if (!sa) {
		e->dest.gen = gen;
		e->flags |= MPF_DGPEER;
		return;
	}
	e->flags &= (uint8_t)~(MPF_DEST4 | MPF_DEST6);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;
		memset(e->dest.addr, 0, sizeof e->dest.addr);
		memcpy(e->dest.addr, &in->sin_addr, 4);
		e->dest.port = ntohs(in->sin_port);
		e->dest.scope = 0;
		e->flags |= MPF_DEST4;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		memcpy(e->dest.addr, &in6->sin6_addr, 16);
		e->dest.port = ntohs(in6->sin6_port);
		e->dest.scope = in6->sin6_scope_id;
		e->flags |= MPF_DEST6;
	}
}

ssize_t mp_dgram_sendmsg(int fd, struct mp_fd *e, const struct msghdr *msg, int flags)
{
	struct iovec v[1 + UIO_MAXIOV];
	struct mps_dgram_framing h;
	const struct sockaddr *sa = NULL;
	struct msghdr m;
	size_t total = 0;
	uint16_t gen;
	ssize_t n;
	int rc;

	if (msg->msg_iovlen > UIO_MAXIOV)
		return mp_fail(EMSGSIZE);
	for (size_t i = 0; i < msg->msg_iovlen; i++) {
		v[1 + i] = msg->msg_iov[i];
		total += msg->msg_iov[i].iov_len;
	}
	if (total > 65535 - 8)
		return mp_fail(EMSGSIZE);
	if (msg->msg_name && msg->msg_namelen) {
		sa = msg->msg_name;
		if (msg->msg_namelen < sizeof(sa_family_t) ||
		    (sa->sa_family == AF_INET && msg->msg_namelen < sizeof(struct sockaddr_in)) ||
		    (sa->sa_family == AF_INET6 && msg->msg_namelen < sizeof(struct sockaddr_in6)))
			return mp_fail(EINVAL);
		if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6 &&
		    sa->sa_family != AF_UNSPEC)
			return mp_fail(EAFNOSUPPORT);
		if (sa->sa_family == AF_UNSPEC)
			sa = NULL; /* the connected peer, as for no address */
	}
	if (msg->msg_controllen)
		mp_warn_once(&warned_cmsg, "ancillary data on INS UDP sockets is not carried yet");
	gen = mps_connect_gen();
	if (sa ? !dest_cached(e, sa) : !((e->flags & MPF_DGPEER) && e->dest.gen == gen)) {
		/* Slow path: the ring, errno synchronous. */
		memset(&m, 0, sizeof m);
		m.msg_name = (void *)sa;
		m.msg_namelen = sa ? msg->msg_namelen : 0;
		m.msg_iov = msg->msg_iov;
		m.msg_iovlen = msg->msg_iovlen;
		n = mps_sendto(e->sock, &m, total, flags & ~MSG_NOSIGNAL);
		if (n < 0)
			return mp_fail((int)-n);
		dest_store(e, sa, gen);
		return n;
	}
	rc = mps_dgram_put(&h, sa, sa ? msg->msg_namelen : 0,
			   (uint32_t)flags & ~(uint32_t)(MSG_DONTWAIT | MSG_NOSIGNAL), (uint32_t)total);
	if (rc < 0)
		return mp_fail(-rc);
	v[0].iov_base = h.b;
	v[0].iov_len = sizeof h.b;
	memset(&m, 0, sizeof m);
	m.msg_iov = v;
	m.msg_iovlen = 1 + msg->msg_iovlen;
	n = REAL(sendmsg)(fd, &m, (flags & MSG_DONTWAIT) | MSG_NOSIGNAL);
	if (n < 0) {
		if (errno == EPIPE || errno == ECONNRESET)
			errno = ENETDOWN; /* the INS is gone */
		return -1;
	}
	return n - (ssize_t)sizeof h.b;
}

/* An empty read of an INS UDP socket's end: the INS is gone (the end hangs
 * up: ENETDOWN), or the socket's read side was shut down and nothing is
 * queued, which Linux's UDP reports as end-of-file when blocking and EAGAIN
 * when not (the INS shuts the write half of its end). */
static ssize_t dgram_eof(int fd, int flags)
{
	struct pollfd p = { .fd = fd, .events = 0 };
	int hup, fl;
	MP_SAVE;

	hup = poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
	fl = hup || (flags & MSG_DONTWAIT) ? 0 : REAL(fcntl)(fd, F_GETFL);
	MP_RESTORE;
	if (hup)
		return mp_fail(ENETDOWN);
	if ((flags & MSG_DONTWAIT) || (fl >= 0 && (fl & O_NONBLOCK)))
		return mp_fail(EAGAIN);
	return 0;
}

ssize_t mp_dgram_recvmsg(int fd, struct mp_fd *e, struct msghdr *msg, int flags)
{
	struct iovec v[1 + UIO_MAXIOV];
	struct mps_dgram_framing h;
	struct msghdr m;
	socklen_t l;
	ssize_t n;

	(void)e;
	if (flags & MSG_ERRQUEUE)
		return mp_fail(EAGAIN); /* no error queue on INS sockets */
	if (msg->msg_iovlen > UIO_MAXIOV)
		return mp_fail(EMSGSIZE);
	for (size_t i = 0; i < msg->msg_iovlen; i++)
		v[1 + i] = msg->msg_iov[i];
	v[0].iov_base = h.b;
	v[0].iov_len = sizeof h.b;
	memset(&m, 0, sizeof m);
	m.msg_iov = v;
	m.msg_iovlen = 1 + msg->msg_iovlen;
	n = REAL(recvmsg)(fd, &m, flags & (MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC | MSG_WAITALL));
	if (n < 0)
		return -1;
	if (n == 0)
		return dgram_eof(fd, flags);
	if (n < (ssize_t)sizeof h.b)
		return mp_fail(EIO);
	l = msg->msg_name ? msg->msg_namelen : 0;
	if (mps_dgram_get(&h, msg->msg_name, msg->msg_name ? &l : NULL) < 0)
		return mp_fail(EIO);
	if (msg->msg_name)
		msg->msg_namelen = l;
	msg->msg_controllen = 0;
	msg->msg_flags = m.msg_flags & MSG_TRUNC;
	return n - (ssize_t)sizeof h.b;
}

/* A pending UDP socket sending to a non-loopback address becomes INS
 * first. Returns the entry to use (NULL: kernel), or (void*)-1 on error. */
static struct mp_fd *send_decide(int fd, struct mp_fd *e, const struct sockaddr *sa,
				 socklen_t len)
{
	int rc;

	if (e->kind != MPK_PENDING)
		return e;
	if (e->type != SOCK_DGRAM || !sa)
		return NULL;
	if (mp_dst_kernel(sa, len)) {
		memset(e, 0, sizeof *e);
		return NULL;
	}
	rc = mp_convert(fd, e);
	if (rc == 1) {
		memset(e, 0, sizeof *e);
		return NULL;
	}
	return rc < 0 ? (struct mp_fd *)-1 : e;
}

MP_EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags,
			 const struct sockaddr *sa, socklen_t salen)
{
	struct mp_fd *e = mp_get(fd);
	ssize_t rc;

	if (e && e->kind == MPK_PENDING)
		e = send_decide(fd, e, sa, salen);
	if (!e) {
		rc = REAL(sendto)(fd, buf, len, flags, sa, salen);
	} else if (e == (struct mp_fd *)-1) {
		rc = -1;
	} else if (e->kind == MPK_DGRAM) {
		struct iovec iov = { (void *)buf, len };
		struct msghdr m = { .msg_name = (void *)sa, .msg_namelen = sa ? salen : 0,
				    .msg_iov = &iov, .msg_iovlen = 1 };
		rc = mp_dgram_sendmsg(fd, e, &m, flags);
	} else if (e->kind == MPK_INTERNAL) {
		rc = mp_fail(EBADF);
	} else {
		if (e->flags & MPF_FILLER)
			mp_settle(fd, e);
		rc = REAL(send)(fd, buf, len, flags);
	}
	log_io(rc, "sendto", fd, len);
	return rc;
}

MP_EXPORT ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	struct mp_fd *e = mp_get(fd);
	ssize_t rc;

	if (e && e->kind == MPK_DGRAM) {
		struct iovec iov = { (void *)buf, len };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		rc = mp_dgram_sendmsg(fd, e, &m, flags);
	} else {
		if (e && (e->flags & MPF_FILLER))
			mp_settle(fd, e);
		rc = REAL(send)(fd, buf, len, flags);
	}
	log_io(rc, "send", fd, len);
	return rc;
}

MP_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct mp_fd *e = mp_get(fd);
	ssize_t rc;

	if (e && e->kind == MPK_PENDING)
		e = send_decide(fd, e, msg->msg_name, msg->msg_namelen);
	if (e == (struct mp_fd *)-1) {
		rc = -1;
	} else if (!e) {
		rc = REAL(sendmsg)(fd, msg, flags);
	} else if (e->kind == MPK_DGRAM) {
		rc = mp_dgram_sendmsg(fd, e, msg, flags);
	} else if (e->kind == MPK_INTERNAL) {
		rc = mp_fail(EBADF);
	} else if (msg->msg_name) {
		struct msghdr m = *msg;
		m.msg_name = NULL;
		m.msg_namelen = 0;
		rc = REAL(sendmsg)(fd, &m, flags);
	} else {
		if (e->flags & MPF_FILLER)
			mp_settle(fd, e);
		rc = REAL(sendmsg)(fd, msg, flags);
	}
	log_io(rc, "sendmsg", fd, msg->msg_iovlen);
	return rc;
}

MP_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
	struct mp_fd *e = mp_get(fd);
	unsigned int i;
	ssize_t n;
	int rc;

	if (e && e->kind == MPK_PENDING && vlen)
		e = send_decide(fd, e, vec[0].msg_hdr.msg_name, vec[0].msg_hdr.msg_namelen);
	if (e == (struct mp_fd *)-1)
		return -1;
	if (!e || e->kind != MPK_DGRAM) {
		rc = REAL(sendmmsg)(fd, vec, vlen, flags);
	} else {
		if (vlen > UIO_MAXIOV)
			vlen = UIO_MAXIOV;
		for (i = 0; i < vlen; i++) {
			n = mp_dgram_sendmsg(fd, e, &vec[i].msg_hdr, flags);
			if (n < 0)
				break;
			vec[i].msg_len = (unsigned int)n;
		}
		rc = i ? (int)i : -1;
	}
	log_io(rc, "sendmmsg", fd, vlen);
	return rc;
}

MP_EXPORT ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *sa,
			   socklen_t *salen)
{
	struct mp_fd *e = mp_get(fd);
	ssize_t rc;

	if (!e || e->kind == MPK_PENDING) {
		rc = REAL(recvfrom)(fd, buf, len, flags, sa, salen);
	} else if (e->kind == MPK_DGRAM) {
		struct iovec iov = { buf, len };
		struct msghdr m = { .msg_name = sa, .msg_namelen = sa && salen ? *salen : 0,
				    .msg_iov = &iov, .msg_iovlen = 1 };
		rc = mp_dgram_recvmsg(fd, e, &m, flags);
		if (rc >= 0 && sa && salen)
			*salen = m.msg_namelen;
	} else if (e->kind == MPK_INTERNAL) {
		rc = mp_fail(EBADF);
	} else {
		/* TCP reports no source address. */
		if ((flags & MSG_TRUNC) && e->kind == MPK_STREAM)
			rc = mp_stream_recv_trunc(fd, len, flags);
		else
			rc = REAL(recv)(fd, buf, len, flags);
		if (rc >= 0 && sa && salen)
			*salen = 0;
	}
	log_io(rc, "recvfrom", fd, len);
	return rc;
}

MP_EXPORT ssize_t recv(int fd, void *buf, size_t len, int flags)
{
	struct mp_fd *e = mp_get(fd);
	ssize_t rc;

	if (e && e->kind == MPK_DGRAM) {
		struct iovec iov = { buf, len };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		rc = mp_dgram_recvmsg(fd, e, &m, flags);
	} else if (e && e->kind == MPK_STREAM && (flags & MSG_TRUNC)) {
		rc = mp_stream_recv_trunc(fd, len, flags);
	} else {
		rc = REAL(recv)(fd, buf, len, flags);
	}
	log_io(rc, "recv", fd, len);
	return rc;
}

MP_EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	struct mp_fd *e = mp_get(fd);
	ssize_t rc;

	if (!e || e->kind == MPK_PENDING || e->kind == MPK_LISTEN) {
		rc = REAL(recvmsg)(fd, msg, flags);
	} else if (e->kind == MPK_DGRAM) {
		rc = mp_dgram_recvmsg(fd, e, msg, flags);
	} else if (e->kind == MPK_INTERNAL) {
		rc = mp_fail(EBADF);
	} else {
		rc = REAL(recvmsg)(fd, msg, flags);
		if (rc >= 0)
			msg->msg_namelen = 0;
	}
	log_io(rc, "recvmsg", fd, msg->msg_iovlen);
	return rc;
}

MP_EXPORT int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags,
		       struct timespec *timeout)
{
	struct mp_fd *e = mp_get(fd);
	unsigned int i;
	ssize_t n;
	int rc, f;

	if (!e || e->kind != MPK_DGRAM) {
		rc = REAL(recvmmsg)(fd, vec, vlen, flags, timeout);
	} else {
		/* The timeout is not applied on INS sockets (it is only
		 * checked between datagrams by the kernel, too). */
		if (vlen > UIO_MAXIOV)
			vlen = UIO_MAXIOV;
		for (i = 0; i < vlen; i++) {
			f = flags & ~MSG_WAITFORONE;
			if (i > 0 && (flags & MSG_WAITFORONE))
				f |= MSG_DONTWAIT;
			n = mp_dgram_recvmsg(fd, e, &vec[i].msg_hdr, f);
			if (n < 0)
				break;
			vec[i].msg_len = (unsigned int)n;
		}
		rc = i ? (int)i : -1;
	}
	log_io(rc, "recvmmsg", fd, vlen);
	return rc;
}

/* _FORTIFY_SOURCE entry points: same check as glibc, then the interposer. */
MP_EXPORT ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags)
{
	if (len > buflen) {
		static const char m[] = "*** buffer overflow detected ***: terminated\n";
		if (REAL(write)(2, m, sizeof m - 1) < 0) {
		}
		abort();
	}
	return recv(fd, buf, len, flags);
}

MP_EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags,
				 struct sockaddr *sa, socklen_t *salen)
{
	if (len > buflen) {
		static const char m[] = "*** buffer overflow detected ***: terminated\n";
		if (REAL(write)(2, m, sizeof m - 1) < 0) {
		}
		abort();
	}
	return recvfrom(fd, buf, len, flags, sa, salen);
}

MP_EXPORT ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen)
{
	if (len > buflen) {
		static const char m[] = "*** buffer overflow detected ***: terminated\n";
		if (REAL(write)(2, m, sizeof m - 1) < 0) {
		}
		abort();
	}
	return read(fd, buf, len);
}

/* read, write, readv and writev: an INS UDP socket's datagram is recv or
 * send with no flags, as on Linux; any other fd goes to the real call. */
MP_EXPORT ssize_t read(int fd, void *buf, size_t len)
{
	struct mp_fd *e = mp_get(fd);
	struct iovec iov = { buf, len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t rc;

	if (__builtin_expect(!e || e->kind != MPK_DGRAM, 1))
		return REAL(read)(fd, buf, len);
	rc = mp_dgram_recvmsg(fd, e, &m, 0);
	log_io(rc, "read", fd, len);
	return rc;
}

MP_EXPORT ssize_t write(int fd, const void *buf, size_t len)
{
	struct mp_fd *e = mp_get(fd);
	struct iovec iov = { (void *)buf, len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t rc;

	if (__builtin_expect(!e || e->kind != MPK_DGRAM, 1))
		return REAL(write)(fd, buf, len);
	rc = mp_dgram_sendmsg(fd, e, &m, 0);
	log_io(rc, "write", fd, len);
	return rc;
}

MP_EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
	struct mp_fd *e = mp_get(fd);
	struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt };
	ssize_t rc;

	if (__builtin_expect(!e || e->kind != MPK_DGRAM, 1))
		return REAL(readv)(fd, iov, cnt);
	rc = cnt < 0 || cnt > UIO_MAXIOV ? mp_fail(EINVAL) : mp_dgram_recvmsg(fd, e, &m, 0);
	log_io(rc, "readv", fd, (size_t)cnt);
	return rc;
}

MP_EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	struct mp_fd *e = mp_get(fd);
	struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt };
	ssize_t rc;

	if (__builtin_expect(!e || e->kind != MPK_DGRAM, 1))
		return REAL(writev)(fd, iov, cnt);
	rc = cnt < 0 || cnt > UIO_MAXIOV ? mp_fail(EINVAL) : mp_dgram_sendmsg(fd, e, &m, 0);
	log_io(rc, "writev", fd, (size_t)cnt);
	return rc;
}
