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
#include <sys/uio.h>
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

/* probe_iov reads one byte of every page the payload spans through the
 * kernel (process_vm_readv on ourselves): 0 when all are readable,
 * -EFAULT when one is not. The ring send copies the payload in user space,
 * where a bad buffer would be a fault, not the kernel's EFAULT. When the
 * call itself is refused (seccomp, an old kernel) nothing is probed. */
static int probe_iov(const struct iovec *iov, size_t n)
{
	enum { MAXPROBE = 64, PAGE = 4096 };
	struct iovec rem[MAXPROBE], loc;
	char scratch[MAXPROBE];
	size_t k = 0;
	ssize_t got;
	int bad = 0;
	MP_SAVE;

	/* i == n flushes what is left. */
	for (size_t i = 0; i <= n && !bad; i++) {
		uintptr_t p = i < n ? (uintptr_t)iov[i].iov_base : 0;
		uintptr_t end = i < n ? p + iov[i].iov_len : 0;

		for (; p < end && k < MAXPROBE; p = (p | (PAGE - 1)) + 1) {
			rem[k].iov_base = (void *)p;
			rem[k++].iov_len = 1;
		}
		if (k == MAXPROBE || (i == n && k)) {
			loc.iov_base = scratch;
			loc.iov_len = k;
			got = process_vm_readv(getpid(), &loc, 1, rem, k, 0);
			bad = (got < 0 && errno == EFAULT) || (got >= 0 && (size_t)got < k);
			k = 0;
			if (p < end)
				i--; /* this iovec has pages left */
		}
	}
	MP_RESTORE;
	return bad ? -EFAULT : 0;
}

/* Control messages on send that set a per-datagram IP field, and the
 * socket option that sets it for every datagram. */
static const struct {
	int level, type, opt, min, max;
} send_cmsgs[] = {
	{ IPPROTO_IP, IP_TOS, IP_TOS, 0, 255 },
	{ IPPROTO_IP, IP_TTL, IP_TTL, 1, 255 },
	{ IPPROTO_IPV6, IPV6_TCLASS, IPV6_TCLASS, -1, 255 },
	{ IPPROTO_IPV6, IPV6_HOPLIMIT, IPV6_UNICAST_HOPS, -1, 255 },
};

/* A datagram with control messages: each IP_TOS, IP_TTL, IPV6_TCLASS or
 * IPV6_HOPLIMIT one (checked as Linux checks it) sets the socket's option
 * for this datagram only: the INS's option is set, the datagram goes
 * through the ring, the option is set back. Other control messages are
 * not carried (logged once). Another thread's datagram sent meanwhile on
 * the same socket takes the value too. */
static ssize_t send_with_cmsg(struct mp_fd *e, const struct msghdr *msg,
			      const struct sockaddr *sa, size_t total, int flags)
{
	enum { NC = sizeof send_cmsgs / sizeof send_cmsgs[0] };
	int want[NC], old[NC], have[NC] = { 0 }, saved[NC] = { 0 };
	struct cmsghdr *c;
	struct msghdr m;
	socklen_t l;
	ssize_t n;
	int rc = 0;

	if (total && probe_iov(msg->msg_iov, msg->msg_iovlen) < 0)
		return mp_fail(EFAULT);
	for (c = CMSG_FIRSTHDR((struct msghdr *)msg); c; c = CMSG_NXTHDR((struct msghdr *)msg, c)) {
		size_t dl = c->cmsg_len - CMSG_LEN(0);
		size_t i;
		int v;

		for (i = 0; i < NC; i++)
			if (send_cmsgs[i].level == c->cmsg_level && send_cmsgs[i].type == c->cmsg_type)
				break;
		if (i == NC) {
			mp_warn_once(&warned_cmsg, "ancillary data on send other than IP_TOS, IP_TTL, "
						   "IPV6_TCLASS and IPV6_HOPLIMIT is not carried on INS UDP sockets");
			continue;
		}
		if (dl == sizeof(int))
			memcpy(&v, CMSG_DATA(c), sizeof v);
		else if (dl == 1 && c->cmsg_type == IP_TOS)
			v = *CMSG_DATA(c);
		else
			return mp_fail(EINVAL);
		if (v < send_cmsgs[i].min || v > send_cmsgs[i].max)
			return mp_fail(EINVAL);
		want[i] = v;
		have[i] = 1;
	}
	for (size_t i = 0; i < NC && rc == 0; i++) {
		if (!have[i])
			continue;
		l = sizeof old[i];
		rc = mps_getsockopt(e->sock, send_cmsgs[i].level, send_cmsgs[i].opt, &old[i], &l);
		if (rc == 0)
			rc = mps_setsockopt(e->sock, send_cmsgs[i].level, send_cmsgs[i].opt, &want[i],
					    sizeof want[i]);
		saved[i] = rc == 0;
	}
	n = rc;
	if (rc == 0) {
		memset(&m, 0, sizeof m);
		m.msg_name = (void *)sa;
		m.msg_namelen = sa ? msg->msg_namelen : 0;
		m.msg_iov = msg->msg_iov;
		m.msg_iovlen = msg->msg_iovlen;
		n = mps_sendto(e->sock, &m, total, flags & ~MSG_NOSIGNAL);
	}
	for (size_t i = 0; i < NC; i++)
		if (saved[i])
			mps_setsockopt(e->sock, send_cmsgs[i].level, send_cmsgs[i].opt, &old[i],
				       sizeof old[i]);
	return n < 0 ? mp_fail((int)-n) : n;
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
	if (msg->msg_controllen && msg->msg_control)
		return send_with_cmsg(e, msg, sa, total, flags);
	gen = mps_connect_gen();
	if (sa ? !dest_cached(e, sa) : !((e->flags & MPF_DGPEER) && e->dest.gen == gen)) {
		/* Slow path: the ring, errno synchronous. */
		if (total && probe_iov(msg->msg_iov, msg->msg_iovlen) < 0)
			return mp_fail(EFAULT);
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

/* The control block the INS puts between the framing and the payload when
 * the socket asked for control data (isolator/ins/engine/dgramctl.go has
 * the layout; docs/protocol.md). */
enum {
	DGCTL_SIZE = 64,
	DGCTL_FLAG = 1, /* framing flags: a control block follows */
	DGCTL_TOS = 1,
	DGCTL_TTL = 2,
	DGCTL_HOPLIMIT = 4,
	DGCTL_TCLASS = 8,
	DGCTL_PKTINFO4 = 16,
	DGCTL_PKTINFO6 = 32,
	DGCTL_ORIGDST = 64,
	DGCTL_STAMP = 128,   /* SO_TIMESTAMP: i64 ns at 56 */
	DGCTL_STAMPNS = 256, /* SO_TIMESTAMPNS */
};

/* Appends one control message to msg (MSG_CTRUNC when it does not fit). */
static void put_cmsg(struct msghdr *msg, size_t *used, int level, int type, const void *data,
		     size_t len)
{
	struct cmsghdr *c;

	if (!msg->msg_control || msg->msg_controllen < *used + CMSG_LEN(len)) {
		msg->msg_flags |= MSG_CTRUNC;
		return;
	}
	c = (struct cmsghdr *)((char *)msg->msg_control + *used);
	c->cmsg_len = CMSG_LEN(len);
	c->cmsg_level = level;
	c->cmsg_type = type;
	memcpy(CMSG_DATA(c), data, len);
	*used += CMSG_SPACE(len);
	if (*used > msg->msg_controllen)
		*used = msg->msg_controllen;
}

/* Turns a control block into the app's control messages, in Linux's order
 * (the receive time; IPv4: pktinfo, TTL, TOS, original destination; IPv6: pktinfo, hop
 * limit, traffic class, original destination). */
static void put_ctl(struct msghdr *msg, const unsigned char *b)
{
	uint32_t mask;
	size_t used = 0;
	int32_t ifindex;
	int v;

	memcpy(&mask, b, 4);
	memcpy(&ifindex, b + 12, 4);
	if (mask & (DGCTL_STAMP | DGCTL_STAMPNS)) {
		/* First, as Linux's sock_recv_cmsgs. */
		int64_t ns;
		memcpy(&ns, b + 56, 8);
		if (mask & DGCTL_STAMPNS) {
			struct timespec ts = { .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };
			put_cmsg(msg, &used, SOL_SOCKET, SO_TIMESTAMPNS_OLD, &ts, sizeof ts);
		} else {
			struct timeval tv = { .tv_sec = ns / 1000000000, .tv_usec = (ns % 1000000000) / 1000 };
			put_cmsg(msg, &used, SOL_SOCKET, SO_TIMESTAMP_OLD, &tv, sizeof tv);
		}
	}
	if (mask & DGCTL_PKTINFO6) {
		/* With both, an IPv4 datagram on an IPv6 socket: its
		 * destination IPv4-mapped, before the IPv4 one as Linux. */
		struct in6_pktinfo pi;
		memset(&pi, 0, sizeof pi);
		pi.ipi6_ifindex = (unsigned int)ifindex;
		if (mask & DGCTL_PKTINFO4) {
			pi.ipi6_addr.s6_addr[10] = 0xff;
			pi.ipi6_addr.s6_addr[11] = 0xff;
			memcpy(&pi.ipi6_addr.s6_addr[12], b + 20, 4);
		} else {
			memcpy(&pi.ipi6_addr, b + 20, 16);
		}
		put_cmsg(msg, &used, IPPROTO_IPV6, IPV6_PKTINFO, &pi, sizeof pi);
	}
	if (mask & DGCTL_PKTINFO4) {
		struct in_pktinfo pi;
		memset(&pi, 0, sizeof pi);
		pi.ipi_ifindex = ifindex;
		memcpy(&pi.ipi_spec_dst, b + 16, 4);
		memcpy(&pi.ipi_addr, b + 20, 4);
		put_cmsg(msg, &used, IPPROTO_IP, IP_PKTINFO, &pi, sizeof pi);
	}
	if (mask & DGCTL_TTL) {
		v = b[5];
		put_cmsg(msg, &used, IPPROTO_IP, IP_TTL, &v, sizeof v);
	}
	if (mask & DGCTL_TOS)
		put_cmsg(msg, &used, IPPROTO_IP, IP_TOS, b + 4, 1);
	if (mask & DGCTL_HOPLIMIT) {
		v = b[6];
		put_cmsg(msg, &used, IPPROTO_IPV6, IPV6_HOPLIMIT, &v, sizeof v);
	}
	if (mask & DGCTL_TCLASS) {
		memcpy(&v, b + 8, 4);
		put_cmsg(msg, &used, IPPROTO_IPV6, IPV6_TCLASS, &v, sizeof v);
	}
	if (mask & DGCTL_ORIGDST) {
		uint16_t fam, port;
		memcpy(&fam, b + 36, 2);
		memcpy(&port, b + 38, 2);
		if (fam == AF_INET) {
			struct sockaddr_in sin;
			memset(&sin, 0, sizeof sin);
			sin.sin_family = AF_INET;
			sin.sin_port = htons(port);
			memcpy(&sin.sin_addr, b + 40, 4);
			put_cmsg(msg, &used, IPPROTO_IP, IP_ORIGDSTADDR, &sin, sizeof sin);
		} else {
			struct sockaddr_in6 sin6;
			memset(&sin6, 0, sizeof sin6);
			sin6.sin6_family = AF_INET6;
			sin6.sin6_port = htons(port);
			memcpy(&sin6.sin6_addr, b + 40, 16);
			put_cmsg(msg, &used, IPPROTO_IPV6, IPV6_ORIGDSTADDR, &sin6, sizeof sin6);
		}
	}
	msg->msg_controllen = used;
}

/* Byte at offset off of an iovec array (off < the total). */
static unsigned char *iov_at(const struct iovec *iov, size_t off)
{
	while (off >= iov->iov_len)
		off -= iov++->iov_len;
	return (unsigned char *)iov->iov_base + off;
}

/* The first DGCTL_SIZE of the n bytes read into iov are a control block:
 * copies it to ctl and moves the rest to the front. Returns the payload's
 * length, or -1 when fewer than DGCTL_SIZE bytes were read. */
static ssize_t iov_unshift(const struct iovec *iov, size_t cnt, size_t n, unsigned char *ctl)
{
	size_t total = 0;

	for (size_t i = 0; i < cnt; i++)
		total += iov[i].iov_len;
	if (n > total)
		n = total; /* MSG_TRUNC reports more than the buffers hold */
	if (n < DGCTL_SIZE)
		return -1;
	for (size_t i = 0; i < DGCTL_SIZE; i++)
		ctl[i] = *iov_at(iov, i);
	for (size_t i = DGCTL_SIZE; i < n; i++)
		*iov_at(iov, i - DGCTL_SIZE) = *iov_at(iov, i);
	return (ssize_t)(n - DGCTL_SIZE);
}

ssize_t mp_dgram_recvmsg(int fd, struct mp_fd *e, struct msghdr *msg, int flags)
{
	struct iovec v[2 + UIO_MAXIOV];
	struct mps_dgram_framing h;
	unsigned char ctl[DGCTL_SIZE];
	struct msghdr m;
	uint32_t fflags = 0;
	size_t hl = sizeof h.b;
	socklen_t l;
	ssize_t n;
	int k = 0;

	if (flags & MSG_ERRQUEUE)
		return mp_fail(EAGAIN); /* no error queue on INS sockets */
	if (msg->msg_iovlen > UIO_MAXIOV)
		return mp_fail(EMSGSIZE);
	if (e->flags & MPF_DGCTL) {
		/* The framing says whether a control block follows: peek
		 * at it first (a thread that takes the datagram in between
		 * leaves this one to misread the next). */
		n = REAL(recv)(fd, h.b, sizeof h.b, MSG_PEEK | (flags & MSG_DONTWAIT));
		if (n < 0)
			return -1;
		if (n == 0)
			return dgram_eof(fd, flags);
		if (n == (ssize_t)sizeof h.b)
			memcpy(&fflags, h.b + 28, 4);
	}
	v[k].iov_base = h.b;
	v[k++].iov_len = sizeof h.b;
	if (fflags & DGCTL_FLAG) {
		v[k].iov_base = ctl;
		v[k++].iov_len = sizeof ctl;
		hl += sizeof ctl;
	}
	for (size_t i = 0; i < msg->msg_iovlen; i++)
		v[k++] = msg->msg_iov[i];
	memset(&m, 0, sizeof m);
	m.msg_iov = v;
	m.msg_iovlen = (size_t)k;
	n = REAL(recvmsg)(fd, &m, flags & (MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC | MSG_WAITALL));
	if (n < 0)
		return -1;
	if (n == 0)
		return dgram_eof(fd, flags);
	if (n < (ssize_t)hl)
		return mp_fail(EIO);
	l = msg->msg_name ? msg->msg_namelen : 0;
	if (mps_dgram_get(&h, msg->msg_name, msg->msg_name ? &l : NULL) < 0)
		return mp_fail(EIO);
	if (msg->msg_name)
		msg->msg_namelen = l;
	msg->msg_flags = m.msg_flags & MSG_TRUNC;
	if (!(fflags & DGCTL_FLAG)) {
		memcpy(&fflags, h.b + 28, 4);
		if (fflags & DGCTL_FLAG) {
			/* A control block this descriptor did not expect (its
			 * option was set by another process, or before an
			 * exec): it is at the start of the app's buffer. */
			e->flags |= MPF_DGCTL;
			n = iov_unshift(msg->msg_iov, msg->msg_iovlen, (size_t)(n - (ssize_t)hl), ctl);
			if (n < 0)
				return mp_fail(EIO);
			hl = 0;
		} else {
			fflags = 0;
		}
	}
	if (fflags & DGCTL_FLAG)
		put_ctl(msg, ctl);
	else
		msg->msg_controllen = 0;
	return n - (ssize_t)hl;
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
		 * checked between datagrams by the kernel, too); an invalid
		 * one is refused as the kernel does. */
		if (timeout && (timeout->tv_sec < 0 || timeout->tv_nsec < 0 ||
				timeout->tv_nsec >= 1000000000L)) {
			rc = mp_fail(EINVAL);
			log_io(rc, "recvmmsg", fd, vlen);
			return rc;
		}
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
