//go:build ignore

/*
 * log.c: MPSHIM_LOG=debug traces every interposed call on stderr. Each line
 * is formatted into a stack buffer and written with one real write(2) (fd 2
 * may be an INS socket); errno is preserved and nothing is allocated.
 */
#include "shim.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

static void emit(const char *fmt, va_list ap)
{
	char buf[512];
	int n, m;

	n = snprintf(buf, sizeof buf, "mpshim[%d]: ", (int)getpid());
	if (n < 0)
		return;
	m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
	if (m < 0)
		return;
	n += m;
	if (n > (int)sizeof buf - 2)
		n = (int)sizeof buf - 2;
	buf[n++] = '\n';
	if (REAL(write)(2, buf, (size_t)n) < 0) {
		/* nothing to do: stderr is gone */
	}
}

void mp_log(const char *fmt, ...)
{
	va_list ap;
	MP_SAVE;

	va_start(ap, fmt);
	emit(fmt, ap);
	va_end(ap);
	MP_RESTORE;
}

void mp_warn_once(int *once, const char *fmt, ...)
{
	va_list ap;
	MP_SAVE;

	if (__atomic_exchange_n(once, 1, __ATOMIC_RELAXED) == 0) {
		va_start(ap, fmt);
		emit(fmt, ap);
		va_end(ap);
	}
	MP_RESTORE;
}

const char *mp_errname(int e)
{
	/* strerror may allocate for unknown values; a fixed table does not. */
	switch (e) {
	case 0: return "OK";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EINVAL: return "EINVAL";
	case EMFILE: return "EMFILE";
	case ENFILE: return "ENFILE";
	case ENOTTY: return "ENOTTY";
	case EPIPE: return "EPIPE";
	case ENOSYS: return "ENOSYS";
	case ENOTSOCK: return "ENOTSOCK";
	case EDESTADDRREQ: return "EDESTADDRREQ";
	case EMSGSIZE: return "EMSGSIZE";
	case EPROTOTYPE: return "EPROTOTYPE";
	case ENOPROTOOPT: return "ENOPROTOOPT";
	case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EADDRINUSE: return "EADDRINUSE";
	case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
	case ENETDOWN: return "ENETDOWN";
	case ENETUNREACH: return "ENETUNREACH";
	case ECONNABORTED: return "ECONNABORTED";
	case ECONNRESET: return "ECONNRESET";
	case ENOBUFS: return "ENOBUFS";
	case EISCONN: return "EISCONN";
	case ENOTCONN: return "ENOTCONN";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ECONNREFUSED: return "ECONNREFUSED";
	case EHOSTUNREACH: return "EHOSTUNREACH";
	case EALREADY: return "EALREADY";
	case EINPROGRESS: return "EINPROGRESS";
	case EPROTO: return "EPROTO";
	default: return "E?";
	}
}

const char *mp_fmt_addr(char *buf, size_t len, const struct sockaddr *sa, socklen_t salen)
{
	char ip[INET6_ADDRSTRLEN];

	if (!sa || salen < sizeof(sa_family_t)) {
		snprintf(buf, len, "-");
		return buf;
	}
	switch (sa->sa_family) {
	case AF_INET: {
		const struct sockaddr_in *in = (const void *)sa;
		if (salen < sizeof *in || !inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip))
			snprintf(buf, len, "inet?");
		else
			snprintf(buf, len, "%s:%u", ip, ntohs(in->sin_port));
		break;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		if (salen < sizeof *in6 || !inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip))
			snprintf(buf, len, "inet6?");
		else
			snprintf(buf, len, "[%s]:%u", ip, ntohs(in6->sin6_port));
		break;
	}
	case AF_UNIX:
		snprintf(buf, len, "unix");
		break;
	case AF_UNSPEC:
		snprintf(buf, len, "unspec");
		break;
	default:
		snprintf(buf, len, "af=%d", sa->sa_family);
	}
	return buf;
}
