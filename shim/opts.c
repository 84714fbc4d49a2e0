//go:build ignore

/*
 * opts.c: setsockopt, getsockopt, ioctl, fcntl, fcntl64.
 *
 * On an INS socket options go to the isolator, except the ones that only
 * concern the app's own end of the socketpair (SO_RCVTIMEO, SO_SNDTIMEO:
 * they bound the native read/write/accept) and TCP_CORK on a stream, which
 * the shim keeps itself (cork_set below says why). On a pending socket they are
 * set on the kernel socket and remembered by bit, so that conversion can
 * read the kernel's value back and replay it to the isolator without
 * storing anything.
 */
#include "shim.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SO_RCVTIMEO_NEW
#define SO_RCVTIMEO_NEW 66
#define SO_SNDTIMEO_NEW 67
#endif

static const struct {
	int level, name;
} replayable[] = {
	{ SOL_SOCKET, SO_REUSEADDR },     { SOL_SOCKET, SO_REUSEPORT },
	{ SOL_SOCKET, SO_KEEPALIVE },     { SOL_SOCKET, SO_LINGER },
	{ SOL_SOCKET, SO_RCVBUF },        { SOL_SOCKET, SO_SNDBUF },
	{ SOL_SOCKET, SO_BROADCAST },     { SOL_SOCKET, SO_OOBINLINE },
	{ SOL_SOCKET, SO_PRIORITY },      { SOL_SOCKET, SO_RCVLOWAT },
	{ IPPROTO_TCP, TCP_NODELAY },     { IPPROTO_TCP, TCP_CORK },
	{ IPPROTO_TCP, TCP_KEEPIDLE },    { IPPROTO_TCP, TCP_KEEPINTVL },
	{ IPPROTO_TCP, TCP_KEEPCNT },     { IPPROTO_TCP, TCP_DEFER_ACCEPT },
	{ IPPROTO_TCP, TCP_FASTOPEN },    { IPPROTO_TCP, TCP_USER_TIMEOUT },
	{ IPPROTO_TCP, TCP_MAXSEG },      { IPPROTO_TCP, TCP_QUICKACK },
	{ IPPROTO_TCP, TCP_SYNCNT },      { IPPROTO_TCP, TCP_CONGESTION },
	{ IPPROTO_IP, IP_TOS },           { IPPROTO_IP, IP_TTL },
	{ IPPROTO_IP, IP_FREEBIND },      { IPPROTO_IP, IP_PKTINFO },
	{ IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT },
	{ IPPROTO_IPV6, IPV6_V6ONLY },    { IPPROTO_IPV6, IPV6_TCLASS },
	{ IPPROTO_IPV6, IPV6_RECVPKTINFO }, { IPPROTO_IPV6, IPV6_UNICAST_HOPS },
};

_Static_assert(sizeof replayable / sizeof replayable[0] <= 32, "optmask is 32 bits");

int mp_opt_local(int level, int name)
{
	return level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO ||
				       name == SO_RCVTIMEO_NEW || name == SO_SNDTIMEO_NEW);
}

void mp_opt_note(struct mp_fd *e, int level, int name)
{
	if (mp_opt_local(level, name))
		return; /* carried by the conversion itself */
	for (unsigned i = 0; i < sizeof replayable / sizeof replayable[0]; i++) {
		if (replayable[i].level == level && replayable[i].name == name) {
			e->optmask |= 1u << i;
			return;
		}
	}
	e->flags |= MPF_UNKNOWN;
}

static int is_cork(int level, int name)
{
	return level == IPPROTO_TCP && name == TCP_CORK;
}

/* TCP_CORK on an INS stream is the shim's own: the entry's MPF_CORK answers
 * getsockopt and nothing goes to the INS. Corking only decides where
 * segments end: under the shim the app's bytes reach the network through
 * the pump, which moves whatever the socketpair holds in chunks of up to
 * 64 KiB, so at worst a header written just before a body leaves in a
 * segment of its own; Linux flushes a corked tail at uncork or after
 * 200 ms, the INS never holds one back. Servers toggle the option around
 * every response (Apache's sendfile with headers, nginx's tcp_nopush): a
 * ring round trip each way would hold the worker for two isolator round
 * trips per response. The checks are Linux's: EFAULT for a missing value,
 * EINVAL for one shorter than an int. */
static int cork_set(struct mp_fd *e, const void *val, socklen_t len)
{
	int v;

	if (len < sizeof v)
		return mp_fail(EINVAL);
	if (!val)
		return mp_fail(EFAULT);
	memcpy(&v, val, sizeof v);
	if (v)
		e->flags |= MPF_CORK;
	else
		e->flags &= (uint8_t)~MPF_CORK;
	return 0;
}

/* As Linux: the value's first min(*len, sizeof(int)) bytes. */
static int cork_get(const struct mp_fd *e, void *val, socklen_t *len)
{
	int v = !!(e->flags & MPF_CORK);
	socklen_t n = *len < sizeof v ? *len : sizeof v;

	memcpy(val, &v, n);
	*len = n;
	return 0;
}

/* Options of a connected stream set while no isolator runs. An app that
 * accepts a connection while the daemon restarts (the INS serve on: docs/
 * design.md, "Survival") sets options on it at once: nginx sets
 * TCP_NODELAY when a connection turns keep-alive and closes the connection
 * if that fails. The boolean options below are kept in the entry's optmask
 * (free on a stream) and the call succeeds; the shim sets them on the INS
 * socket once the process has rejoined (mp_opt_flush) or at the stream's
 * next option call. Any other option fails with the daemon's absence
 * (ENETUNREACH) as before. */
static const struct {
	int level, name;
} deferrable[] = {
	{ IPPROTO_TCP, TCP_NODELAY },
	{ SOL_SOCKET, SO_KEEPALIVE },
	{ IPPROTO_TCP, TCP_QUICKACK },
};

/* Bit 2i: option i is deferred; bit 2i+1: its value is non-zero. */
#define DEFER_SET(i) (1u << (2 * (i)))
#define DEFER_VAL(i) (1u << (2 * (i) + 1))

static int deferred_any; /* some stream may hold deferred options */

static int defer_index(int level, int name)
{
	for (unsigned i = 0; i < sizeof deferrable / sizeof deferrable[0]; i++)
		if (deferrable[i].level == level && deferrable[i].name == name)
			return (int)i;
	return -1;
}

/* defer records option (level, name) = val on stream e; 0 when it did,
 * -1 when the option is not one that may wait. */
static int defer(struct mp_fd *e, int level, int name, const void *val, socklen_t len)
{
	int i = defer_index(level, name), v;

	if (i < 0 || e->kind != MPK_STREAM || len < sizeof v || !val)
		return -1;
	memcpy(&v, val, sizeof v);
	e->optmask |= DEFER_SET(i);
	if (v)
		e->optmask |= DEFER_VAL(i);
	else
		e->optmask &= ~DEFER_VAL(i);
	__atomic_store_n(&deferred_any, 1, __ATOMIC_RELEASE);
	return 0;
}

/* flush_one sets e's deferred options on its INS socket; the ones the
 * isolator cannot take yet stay deferred. */
static void flush_one(unsigned int fd, struct mp_fd *e)
{
	for (unsigned i = 0; i < sizeof deferrable / sizeof deferrable[0]; i++) {
		int v, rc;

		if (!(e->optmask & DEFER_SET(i)))
			continue;
		v = !!(e->optmask & DEFER_VAL(i));
		rc = mps_setsockopt(e->sock, deferrable[i].level, deferrable[i].name, &v, sizeof v);
		if (rc == -MP_FAIL_ERRNO)
			continue;
		if (rc < 0)
			MPLOG("setsockopt(%u): deferred option %d/%d: %s", fd, deferrable[i].level,
			      deferrable[i].name, mp_errname(-rc));
		e->optmask &= ~(DEFER_SET(i) | DEFER_VAL(i));
	}
}

void mp_opt_flush(void)
{
	int left = 0;
	MP_SAVE;

	if (!__atomic_exchange_n(&deferred_any, 0, __ATOMIC_ACQ_REL)) {
		MP_RESTORE;
		return;
	}
	for (unsigned int fd = 0; fd < mp_table_hiwat && fd < mp_table_size; fd++) {
		struct mp_fd *e = &mp_table[fd];

		if (e->kind != MPK_STREAM || !e->optmask)
			continue;
		flush_one(fd, e);
		left |= e->optmask != 0;
	}
	if (left)
		__atomic_store_n(&deferred_any, 1, __ATOMIC_RELEASE);
	MP_RESTORE;
}

int mp_opt_replay(int kfd, struct mp_fd *e, uint64_t sock, int newfd)
{
	unsigned char buf[256];
	socklen_t l;
	int rc, v, flags = 0;

	(void)newfd;
	if (e->flags & MPF_UNKNOWN)
		MPLOG("convert(%d): an option set before conversion is not carried over", kfd);
	for (unsigned i = 0; i < sizeof replayable / sizeof replayable[0]; i++) {
		if (!(e->optmask & (1u << i)))
			continue;
		l = sizeof buf;
		if (REAL(getsockopt)(kfd, replayable[i].level, replayable[i].name, buf, &l) < 0)
			continue;
		if (replayable[i].level == SOL_SOCKET &&
		    (replayable[i].name == SO_RCVBUF || replayable[i].name == SO_SNDBUF) &&
		    l == sizeof v) {
			/* The kernel reports twice what was asked. */
			memcpy(&v, buf, sizeof v);
			v /= 2;
			memcpy(buf, &v, sizeof v);
		}
		if (is_cork(replayable[i].level, replayable[i].name) && e->type == SOCK_STREAM) {
			if (l == sizeof v && memcmp(buf, &(int){ 0 }, sizeof v) != 0)
				flags |= MPF_CORK;
			continue;
		}
		rc = mps_setsockopt(sock, replayable[i].level, replayable[i].name, buf, l);
		if (rc < 0)
			MPLOG("convert(%d): replaying option %d/%d: %s", kfd, replayable[i].level,
			      replayable[i].name, mp_errname(-rc));
		else if (e->type == SOCK_DGRAM && mp_recv_ctl_opt(replayable[i].level, replayable[i].name))
			flags |= MPF_DGCTL;
	}
	return flags;
}

/* Whether an option joins a multicast group on, or sends multicast
 * through, the loopback (ifindex 1, which lo has in every namespace, or an
 * address of 127/8), read as Linux reads each form of the value. */
static int mcast_on_loopback(int level, int name, const void *val, socklen_t len)
{
	struct ip_mreqn m;
	uint32_t ifindex;

	if (!val)
		return 0;
	memset(&m, 0, sizeof m);
	if (level == IPPROTO_IP) {
		switch (name) {
		case IP_ADD_MEMBERSHIP:
		case IP_MULTICAST_IF:
		case IP_ADD_SOURCE_MEMBERSHIP:
			if (len >= sizeof(struct ip_mreqn) && name != IP_ADD_SOURCE_MEMBERSHIP)
				memcpy(&m, val, sizeof m);
			else if (len >= sizeof(struct ip_mreq))
				memcpy(&m, val, sizeof(struct ip_mreq));
			else if (name == IP_MULTICAST_IF && len >= sizeof(struct in_addr))
				memcpy(&m.imr_address, val, sizeof(struct in_addr));
			else
				return 0;
			if (m.imr_ifindex)
				return m.imr_ifindex == 1;
			return (ntohl(m.imr_address.s_addr) >> 24) == 127;
		case MCAST_JOIN_GROUP:
		case MCAST_JOIN_SOURCE_GROUP:
			break;
		default:
			return 0;
		}
	} else if (level == IPPROTO_IPV6) {
		switch (name) {
		case IPV6_ADD_MEMBERSHIP:
			if (len < sizeof(struct ipv6_mreq))
				return 0;
			return ((const struct ipv6_mreq *)val)->ipv6mr_interface == 1;
		case IPV6_MULTICAST_IF:
			if (len < sizeof ifindex)
				return 0;
			memcpy(&ifindex, val, sizeof ifindex);
			return ifindex == 1;
		case MCAST_JOIN_GROUP:
		case MCAST_JOIN_SOURCE_GROUP:
			break;
		default:
			return 0;
		}
	} else {
		return 0;
	}
	/* group_req and group_source_req start with the interface index. */
	if (len < sizeof ifindex)
		return 0;
	memcpy(&ifindex, val, sizeof ifindex);
	return ifindex == 1;
}

/* Whether the process has CAP_NET_ADMIN (effective), which Linux asks of
 * SO_RCVBUFFORCE and SO_SNDBUFFORCE: the INS cannot see the caller. */
static int net_admin(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct d[2];
	int ok;
	MP_SAVE;

	ok = syscall(SYS_capget, &h, d) == 0 && (d[0].effective & (1u << CAP_NET_ADMIN));
	MP_RESTORE;
	return ok;
}

int mp_recv_ctl_opt(int level, int name)
{
	if (level == SOL_SOCKET)
		return name == SO_TIMESTAMP || name == SO_TIMESTAMPNS;
	if (level == IPPROTO_IP)
		return name == IP_PKTINFO || name == IP_RECVTOS || name == IP_RECVTTL ||
		       name == IP_RECVORIGDSTADDR;
	if (level == IPPROTO_IPV6)
		return name == IPV6_RECVPKTINFO || name == IPV6_RECVTCLASS ||
		       name == IPV6_RECVHOPLIMIT || name == IPV6_RECVORIGDSTADDR;
	return 0;
}

/* Whether an option is a multicast option of a UDP socket. */
static int mcast_opt(int level, int name)
{
	if (level == IPPROTO_IP)
		return name == IP_MULTICAST_IF || name == IP_MULTICAST_TTL ||
		       name == IP_MULTICAST_LOOP || name == IP_ADD_MEMBERSHIP ||
		       name == IP_DROP_MEMBERSHIP;
	if (level == IPPROTO_IPV6)
		return name == IPV6_MULTICAST_IF || name == IPV6_MULTICAST_HOPS ||
		       name == IPV6_MULTICAST_LOOP || name == IPV6_ADD_MEMBERSHIP ||
		       name == IPV6_DROP_MEMBERSHIP;
	return 0;
}

MP_EXPORT int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	/* With loopback on the kernel, multicast on the loopback is the
	 * kernel's, as Linux loops it back: an undecided socket settles on the
	 * kernel, a wildcard-bound INS UDP socket moves to the kernel. */
	if (e && !mp_conf.loopback_ins && (e->kind == MPK_PENDING || e->kind == MPK_DGRAM) &&
	    e->type == SOCK_DGRAM && mcast_on_loopback(level, name, val, len)) {
		MP_SAVE;
		if (e->kind == MPK_PENDING) {
			memset(e, 0, sizeof *e);
			e = NULL;
		} else if (mp_dgram_to_kernel(fd, e, NULL, 0) == 0) {
			e = NULL;
		}
		MP_RESTORE;
		if (!e)
			MPLOG("setsockopt(%d, %d, %d): multicast on the loopback, on the kernel", fd, level, name);
	}
	/* With loopback served by the INS, a multicast option decides an
	 * undecided UDP socket for the INS: the option, which the
	 * conversion could not carry over, then applies where the socket's
	 * datagrams go. */
	if (e && mp_conf.loopback_ins && e->kind == MPK_PENDING && e->type == SOCK_DGRAM &&
	    mcast_opt(level, name)) {
		MP_SAVE;
		rc = mp_convert(fd, e);
		if (rc == 1)
			memset(e, 0, sizeof *e), e = NULL;
		if (rc < 0)
			return -1; /* errno: the conversion's */
		MP_RESTORE;
	}
	if (!e) {
		rc = REAL(setsockopt)(fd, level, name, val, len);
	} else if (e->kind == MPK_INTERNAL) {
		rc = mp_fail(EBADF);
	} else if (e->kind == MPK_PENDING) {
		rc = REAL(setsockopt)(fd, level, name, val, len);
		if (rc == 0)
			mp_opt_note(e, level, name);
	} else if (mp_opt_local(level, name)) {
		rc = REAL(setsockopt)(fd, level, name, val, len);
	} else if (e->kind == MPK_STREAM && is_cork(level, name)) {
		if (e->flags & MPF_FILLER)
			mp_settle(fd, e);
		rc = cork_set(e, val, len);
	} else {
		if (e->flags & MPF_FILLER)
			mp_settle(fd, e);
		if (len && !val)
			rc = mp_fail(EFAULT);
		else if (level == SOL_SOCKET && (name == SO_RCVBUFFORCE || name == SO_SNDBUFFORCE) &&
			 len >= sizeof(int) && !net_admin())
			rc = mp_fail(EPERM);
		else {
			if (e->kind == MPK_STREAM && e->optmask)
				flush_one((unsigned int)fd, e);
			rc = mps_setsockopt(e->sock, level, name, val, len);
			if (rc == -MP_FAIL_ERRNO && defer(e, level, name, val, len) == 0)
				rc = 0;
			if (rc == 0 && e->kind == MPK_DGRAM && mp_recv_ctl_opt(level, name))
				e->flags |= MPF_DGCTL;
			rc = rc < 0 ? mp_fail(-rc) : 0;
		}
	}
	if (__builtin_expect(mp_conf.log, 0)) {
		MP_SAVE;
		if (rc < 0)
			mp_log("setsockopt(%d, %d, %d, len %u) = -1 %s", fd, level, name, len,
			       mp_errname(errno));
		else
			mp_log("setsockopt(%d, %d, %d, len %u) = 0", fd, level, name, len);
		MP_RESTORE;
	}
	return rc;
}

MP_EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	if (!e || e->kind == MPK_PENDING) {
		rc = REAL(getsockopt)(fd, level, name, val, len);
	} else if (e->kind == MPK_INTERNAL) {
		rc = mp_fail(EBADF);
	} else if (mp_opt_local(level, name)) {
		rc = REAL(getsockopt)(fd, level, name, val, len);
	} else if (!len || (*len && !val)) {
		rc = mp_fail(EFAULT);
	} else if (e->kind == MPK_STREAM && is_cork(level, name)) {
		if (e->flags & MPF_FILLER)
			mp_settle(fd, e);
		rc = cork_get(e, val, len);
	} else {
		if (e->flags & MPF_FILLER)
			mp_settle(fd, e);
		rc = mps_getsockopt(e->sock, level, name, val, len);
		if (rc < 0) {
			rc = mp_fail(-rc);
		} else if ((e->flags & MPF_FILLER) && level == SOL_SOCKET && name == SO_ERROR &&
			   *len >= sizeof(int) && *(int *)val != 0) {
			/* The connect failed: the end may be writable again. */
			int v = e->sndbuf / 2;
			MP_SAVE;
			REAL(setsockopt)(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
			e->flags &= (uint8_t)~MPF_FILLER;
			MP_RESTORE;
		}
	}
	if (__builtin_expect(mp_conf.log, 0)) {
		MP_SAVE;
		if (rc < 0)
			mp_log("getsockopt(%d, %d, %d) = -1 %s", fd, level, name, mp_errname(errno));
		else if (len && *len == sizeof(int))
			mp_log("getsockopt(%d, %d, %d) = 0 [%d]", fd, level, name, *(int *)val);
		else
			mp_log("getsockopt(%d, %d, %d) = 0 [len %u]", fd, level, name,
			       len ? *len : 0);
		MP_RESTORE;
	}
	return rc;
}

static int ioctl_ins(int fd, struct mp_fd *e, unsigned long req, void *arg)
{
	int v, rc;

	if (e->flags & MPF_FILLER)
		mp_settle(fd, e);
	switch (req) {
	case FIONREAD:
		if (e->kind == MPK_LISTEN)
			return mp_fail(EINVAL);
		if (!arg)
			return mp_fail(EFAULT);
		if (e->kind == MPK_DGRAM) {
			/* The first datagram's size, as Linux's UDP: its
			 * message (SEQPACKET's FIONREAD would count every
			 * queued message) less the framing. */
			ssize_t n;
			MP_SAVE;
			n = REAL(recv)(fd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
			MP_RESTORE;
			v = n >= MPS_DGRAM_FRAMING ? (int)(n - MPS_DGRAM_FRAMING) : 0;
			memcpy(arg, &v, sizeof v);
			return 0;
		}
		rc = REAL(ioctl)(fd, req, &v);
		if (rc < 0)
			return rc;
		memcpy(arg, &v, sizeof v);
		return rc;
	case SIOCOUTQ:
	case SIOCOUTQNSD:
	case SIOCATMARK:
		if (!arg)
			return mp_fail(EFAULT);
		v = 0;
		rc = mps_ioctl_int(e->sock, req, &v);
		if (rc < 0)
			return mp_fail(-rc);
		memcpy(arg, &v, sizeof v);
		return rc;
	default:
		/* FIONBIO, FIOASYNC, FIOCLEX, FIONCLEX, owners: the app's end. */
		return REAL(ioctl)(fd, req, arg);
	}
}

MP_EXPORT int ioctl(int fd, unsigned long req, ...)
{
	struct mp_fd *e = mp_get(fd);
	va_list ap;
	void *arg;
	int rc;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!e || e->kind == MPK_PENDING)
		rc = REAL(ioctl)(fd, req, arg);
	else if (e->kind == MPK_INTERNAL)
		rc = mp_fail(EBADF);
	else
		rc = ioctl_ins(fd, e, req, arg);
	if (__builtin_expect(mp_conf.log, 0)) {
		char a[32];
		snprintf(a, sizeof a, "%#lx", req);
		MP_SAVE;
		if (rc < 0)
			mp_log("ioctl(%d, %s) = -1 %s", fd, a, mp_errname(errno));
		else
			mp_log("ioctl(%d, %s) = %d", fd, a, rc);
		MP_RESTORE;
	}
	return rc;
}

static int do_fcntl(int (*real)(int, int, ...), const char *name, int fd, int cmd, void *arg)
{
	struct mp_fd *e = mp_get(fd);
	int rc;

	if (e && e->kind == MPK_INTERNAL) {
		rc = mp_fail(EBADF);
	} else {
		rc = real(fd, cmd, arg);
		if (rc >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) {
			MP_SAVE;
			mp_copy(fd, rc);
			MP_RESTORE;
		}
	}
	if (__builtin_expect(mp_conf.log, 0)) {
		MP_SAVE;
		if (rc < 0)
			mp_log("%s(%d, %d) = -1 %s", name, fd, cmd, mp_errname(errno));
		else
			mp_log("%s(%d, %d) = %d", name, fd, cmd, rc);
		MP_RESTORE;
	}
	return rc;
}

/* The third argument is an int or a pointer; both travel in the same
 * register, so it is passed on as a pointer-sized value. */
MP_EXPORT int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, cmd);
	arg = va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(REAL(fcntl), "fcntl", fd, cmd, arg);
}

MP_EXPORT int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, cmd);
	arg = va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(REAL(fcntl64), "fcntl64", fd, cmd, arg);
}
