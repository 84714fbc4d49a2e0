//go:build ignore

/*
 * session.c: the app side of the isolator session (docs/protocol.md) and
 * the only file that knows the msgproto wire format and the ring API.
 *
 *   registration connection  AF_UNIX SOCK_SEQPACKET to $MPSHIM_SOCKET,
 *                            Register -> RegisterReply + ring memfd
 *   calls                    one ring request, one ring reply; a request
 *                            carrying descriptors is preceded by a
 *                            header-only FDPass with the same request id on
 *                            the registration connection
 *   fork                     the child drops the parent's ring and
 *                            registers anew (RegForked) before fork returns
 *   exec                     MPSHIM_FDS/MPSHIM_CLIENT (process.c) are
 *                            adopted by the new image's constructor
 *                            (RegExeced)
 *
 * Registration is lazy: a process registers when it first needs an INS
 * socket, a fork child or exec'ed image of a registered process at once.
 * After a failed attempt the next one waits a second.
 */
#include "shim.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "mpring.h"

/* ---- wire format ----------------------------------------------------------
 * Constants, header checks and the address codec come from msgproto's
 * generated mpproto.h. Bodies are written at the offsets of the generated
 * layout (asserted below, so a schema change breaks the build here).
 */

#include "mpproto.h"

#define W_HDR MP_HDR_SIZE
#define W_MAX_OPT MP_MAX_OPTLEN

_Static_assert(MP_REGISTER_FIXED == 48 && MP_FD_PASS_FIXED == 8 && MP_SOCKET_FIXED == 12 && MP_BIND_FIXED == 40 &&
		       MP_LISTEN_FIXED == 16 && MP_CONNECT_FIXED == 48 && MP_SHUTDOWN_FIXED == 16 &&
		       MP_SETSOCKOPT_FIXED == 24 && MP_GETSOCKOPT_FIXED == 24 &&
		       MP_GETSOCKNAME_FIXED == 8 && MP_IOCTL_FIXED == 24 && MP_REPLY_FIXED == 16 &&
		       MP_REGISTER_REPLY_FIXED == 24 && MP_SOCKET_REPLY_FIXED == 8 &&
		       MP_OPT_REPLY_FIXED == 4 && MP_ADDR_REPLY_FIXED == 28 &&
		       MP_IOCTL_REPLY_FIXED == 16 && MP_ACCEPT_NOTIFY_FIXED == 72,
	       "msgproto layout changed: update session.c");
_Static_assert(MPS_ADDR_SIZE == MP_ADDR_SIZE, "address block size");
_Static_assert(MPS_DGRAM_FRAMING == MP_DATAGRAM_FIXED, "datagram framing size");

#define put16(p, v) mp_put16((uint8_t *)(p), (v))
#define put32(p, v) mp_put32((uint8_t *)(p), (v))
#define put64(p, v) mp_put64((uint8_t *)(p), (v))
#define get16(p) mp_get16((const uint8_t *)(p))
#define get32(p) mp_get32((const uint8_t *)(p))
#define get64(p) mp_get64((const uint8_t *)(p))

static void hdr_put(unsigned char *m, uint16_t type, size_t total, uint32_t flags, uint64_t reqid)
{
	struct mp_hdr h;

	mp_hdr_init(&h, type, (uint32_t)total, flags, reqid);
	mp_put_hdr(m, &h);
}

/* Checks a received message (exactly len bytes); returns its type or
 * -EPROTO. */
static int hdr_check(const unsigned char *m, size_t len)
{
	struct mp_hdr h;

	if (mp_check_msg(m, len, &h) != MP_OK)
		return -EPROTO;
	return h.type;
}

int mps_addr_put(unsigned char *w, const struct sockaddr *sa, socklen_t len)
{
	struct mp_addr a;

	memset(&a, 0, sizeof a);
	if (sa && len >= sizeof(sa_family_t) && sa->sa_family == AF_INET &&
	    len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const void *)sa;
		a.family = MP_AF_INET;
		a.port = ntohs(in->sin_port);
		memcpy(a.addr, &in->sin_addr, 4);
	} else if (sa && len >= sizeof(sa_family_t) && sa->sa_family == AF_INET6 &&
		   len >= sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		a.family = MP_AF_INET6;
		a.port = ntohs(in6->sin6_port);
		a.flowinfo = in6->sin6_flowinfo;
		a.scope_id = in6->sin6_scope_id;
		memcpy(a.addr, &in6->sin6_addr, 16);
	} else if (sa && len >= sizeof(sa_family_t) && sa->sa_family != AF_UNSPEC) {
		mp_put_addr(w, &a);
		return sa->sa_family == AF_INET || sa->sa_family == AF_INET6 ? -EINVAL
									      : -EAFNOSUPPORT;
	}
	mp_put_addr(w, &a);
	return 0;
}

int mps_addr_get(const unsigned char *w, struct sockaddr *sa, socklen_t *len)
{
	union {
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
		sa_family_t fam;
	} u;
	struct mp_addr a;
	socklen_t full;

	mp_get_addr(w, &a);
	if (mp_addr_check(&a) != MP_OK)
		return -EINVAL;
	memset(&u, 0, sizeof u);
	switch (a.family) {
	case MP_AF_INET:
		u.in.sin_family = AF_INET;
		u.in.sin_port = htons(a.port);
		memcpy(&u.in.sin_addr, a.addr, 4);
		full = sizeof u.in;
		break;
	case MP_AF_INET6:
		u.in6.sin6_family = AF_INET6;
		u.in6.sin6_port = htons(a.port);
		u.in6.sin6_flowinfo = a.flowinfo;
		u.in6.sin6_scope_id = a.scope_id;
		memcpy(&u.in6.sin6_addr, a.addr, 16);
		full = sizeof u.in6;
		break;
	default:
		u.fam = AF_UNSPEC;
		full = sizeof(sa_family_t);
	}
	if (sa && len)
		memcpy(sa, &u, *len < full ? *len : full);
	if (len)
		*len = full;
	return 0;
}

int mps_dgram_put(struct mps_dgram_framing *f, const struct sockaddr *sa, socklen_t len,
		  uint32_t flags, uint32_t plen)
{
	int rc = mps_addr_put(f->b + offsetof(struct mp_datagram, addr), sa, len);

	put32(f->b + offsetof(struct mp_datagram, flags), flags);
	put32(f->b + offsetof(struct mp_datagram, len), plen);
	return rc;
}

int mps_dgram_get(const struct mps_dgram_framing *f, struct sockaddr *sa, socklen_t *len)
{
	struct mp_datagram d;

	if (mp_dec_datagram(f->b, MP_DATAGRAM_FIXED, &d) != MP_OK)
		return -EPROTO;
	if (sa && len)
		return mps_addr_get(f->b + offsetof(struct mp_datagram, addr), sa, len) ? -EPROTO : 0;
	return 0;
}

int mps_accept_parse(const void *msg, size_t len, uint64_t *sock, const unsigned char **peer,
		     const unsigned char **local)
{
	const unsigned char *m = msg;

	if (hdr_check(m, len) != MP_T_ACCEPT_NOTIFY || len != W_HDR + MP_ACCEPT_NOTIFY_FIXED)
		return -EPROTO;
	*sock = get64(m + W_HDR + 8);
	*local = m + W_HDR + 16;
	*peer = m + W_HDR + 16 + MPS_ADDR_SIZE;
	return 0;
}

/* ---- session state ------------------------------------------------------- */

enum { REFUSED_BY_ISOLATOR = 1, REFUSED_BY_SOCKET = 2 };

static struct {
	pthread_mutex_t mu;
	int fd;                  /* registration connection, -1 when none */
	struct mpring rings[2];  /* a dead ring stays mapped: callers may still be in it */
	struct mpring *ring;     /* current ring, NULL when not registered */
	int next;                /* rings[] index the next registration uses */
	uint64_t client;         /* our client id */
	uint64_t parent;         /* client id of the image we descend from */
	uint64_t key;            /* our socket group's key (RegisterReply) */
	uint64_t parent_key;     /* the key presented with RegForked/RegExeced */
	int regflags;            /* flags of the next Register */
	uint64_t reqid;
	struct timespec failed;  /* time of the last failed registration */
	int failerr;
	int warned;
	/* The last registration was refused by policy (failerr is then
	 * MP_REFUSED_ERRNO): by the isolator (RegisterRefused, with the
	 * credentials it saw) or by the socket's permissions (connect). */
	int refused;
	uint32_t refused_uid, refused_gid;
	int refused_warned;
	int busy; /* the isolator answered the last Register with EAGAIN */
	int lost;                /* a session died: the next one rejoins (RegRejoin) */
	int relisten;            /* a rejoined session awaits mp_relisten */
	pid_t watcher;           /* the process whose watcher thread runs */
} S = { .mu = PTHREAD_MUTEX_INITIALIZER, .fd = -1 };

uint64_t mps_client_id(void)
{
	return S.ring ? S.client : 0;
}

uint64_t mps_client_key(void)
{
	return S.ring ? S.key : 0;
}

int mps_internal_fd(void)
{
	return __atomic_load_n(&S.fd, __ATOMIC_RELAXED);
}

int mps_is_internal_fd(int fd)
{
	return fd >= 0 && fd == __atomic_load_n(&S.fd, __ATOMIC_RELAXED);
}

/* Moves the registration fd off fd (the app is about to dup2 onto it). */
void mps_evict(int fd)
{
	int nfd;
	struct mp_fd *e;

	if (!mps_is_internal_fd(fd))
		return;
	nfd = REAL(fcntl)(fd, F_DUPFD_CLOEXEC, fd + 1);
	if (nfd < 0)
		return;
	if ((e = mp_slot(fd)))
		memset(e, 0, sizeof *e);
	if ((e = mp_slot(nfd)))
		e->kind = MPK_INTERNAL;
	__atomic_store_n(&S.fd, nfd, __ATOMIC_RELAXED);
	for (int i = 0; i < 2; i++)
		if (S.rings[i].peer_fd == fd)
			mpring_set_peer(&S.rings[i], nfd);
	REAL(close)(fd);
}

int mps_high_fd(int fd)
{
	struct rlimit rl;
	int nfd;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > 64) {
		rlim_t lo = (rl.rlim_cur > 1024 ? 1024 : rl.rlim_cur) - 32;
		nfd = REAL(fcntl)(fd, F_DUPFD_CLOEXEC, (int)lo);
		if (nfd >= 0) {
			REAL(close)(fd);
			return nfd;
		}
	}
	return fd;
}

static uint64_t start_time(void)
{
	char buf[1024], *p;
	ssize_t n;
	int fd, field;

	fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof buf - 1);
	REAL(close)(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strrchr(buf, ')');
	if (!p)
		return 0;
	/* p+2 is field 3 (state); field 22 is starttime. */
	p += 2;
	for (field = 3; field < 22 && *p; p++)
		if (*p == ' ')
			field++;
	return strtoull(p, NULL, 10);
}

static void drop_fd(void)
{
	struct mp_fd *e;

	if (S.fd < 0)
		return;
	for (int i = 0; i < 2; i++)
		mpring_set_peer(&S.rings[i], -1);
	if ((e = mp_slot(S.fd)))
		memset(e, 0, sizeof *e);
	REAL(close)(S.fd);
	__atomic_store_n(&S.fd, -1, __ATOMIC_RELAXED);
}

static void start_watcher(void);

/* Whether m (n bytes) is a RegisterRefused; if so, it records the refusal. */
static int refused_by_policy(const unsigned char *m, size_t n)
{
	if (hdr_check(m, n) != MP_T_REGISTER_REFUSED || n != W_HDR + MP_REGISTER_REFUSED_FIXED)
		return 0;
	S.refused = REFUSED_BY_ISOLATOR;
	S.refused_uid = get32(m + W_HDR + offsetof(struct mp_register_refused, uid));
	S.refused_gid = get32(m + W_HDR + offsetof(struct mp_register_refused, gid));
	return 1;
}

/* Registers; called with S.mu held. Returns 0, -MP_REFUSED_ERRNO when the
 * isolator refused this process by policy, or another -errno when it could
 * not be reached or answered otherwise. */
static int do_register(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	unsigned char msg[W_HDR + MP_REGISTER_FIXED], rep[W_HDR + 64];
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 4)];
	} cm;
	struct iovec iov = { rep, sizeof rep };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cm.buf, .msg_controllen = sizeof cm.buf };
	struct timeval tv = { 5, 0 };
	struct cmsghdr *c;
	int fd, memfd = -1, rc, type;
	ssize_t n;
	struct mp_fd *e;
	struct mpring *r;

	fd = REAL(socket)(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* Keep the connection out of the app's way: high, close-on-exec. */
	fd = mps_high_fd(fd);
	if ((e = mp_slot(fd))) {
		memset(e, 0, sizeof *e);
		e->kind = MPK_INTERNAL;
	}
	S.fd = fd;
	REAL(setsockopt)(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	REAL(setsockopt)(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	memcpy(sun.sun_path, mp_conf.path, strlen(mp_conf.path));
	if (REAL(connect)(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
		rc = -errno;
		if (rc == -EACCES || rc == -EPERM) {
			/* The socket is there; its permissions refuse us. */
			S.refused = REFUSED_BY_SOCKET;
			S.refused_uid = (uint32_t)geteuid();
			S.refused_gid = (uint32_t)getegid();
			rc = -MP_REFUSED_ERRNO;
		}
		goto fail;
	}

	memset(msg, 0, sizeof msg);
	hdr_put(msg, MP_T_REGISTER, sizeof msg, 0, 0);
	put32(msg + W_HDR, (uint32_t)getpid());
	put16(msg + W_HDR + 4, MP_VERSION);
	put16(msg + W_HDR + 6, (uint16_t)S.regflags);
	put64(msg + W_HDR + 8, start_time());
	prctl(PR_GET_NAME, (unsigned long)(msg + W_HDR + 16), 0, 0, 0);
	put64(msg + W_HDR + offsetof(struct mp_register, parent), S.regflags ? S.parent : 0);
	put64(msg + W_HDR + offsetof(struct mp_register, key), S.regflags ? S.parent_key : 0);
	if (REAL(send)(fd, msg, sizeof msg, MSG_NOSIGNAL) != (ssize_t)sizeof msg) {
		rc = errno ? -errno : -EPROTO;
		/* A refusing isolator answers before it reads and closes at
		 * once: its RegisterRefused may already wait for us. */
		n = REAL(recvmsg)(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n > 0 && refused_by_policy(rep, (size_t)n))
			rc = -MP_REFUSED_ERRNO;
		else if (n == W_HDR + MP_REPLY_FIXED && hdr_check(rep, (size_t)n) == MP_T_REPLY &&
			 (int32_t)get32(rep + W_HDR) == EAGAIN) {
			rc = -EAGAIN; /* too many registrations at once: try again */
			S.busy = 1;
		}
		goto fail;
	}
	n = REAL(recvmsg)(fd, &mh, MSG_CMSG_CLOEXEC);
	if (n < 0 && errno == ECONNRESET) {
		/* The isolator closed with our Register unread (a refusal
		 * comes before it reads): the kernel reports the reset
		 * first, then what was queued for us. */
		n = REAL(recvmsg)(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0)
			errno = ECONNRESET;
	}
	if (n < 0) {
		rc = -errno;
		goto fail;
	}
	if (refused_by_policy(rep, (size_t)n)) {
		rc = -MP_REFUSED_ERRNO;
		goto fail;
	}
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int f;
			memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
			if (memfd < 0)
				memfd = f;
			else
				REAL(close)(f);
		}
	}
	type = hdr_check(rep, (size_t)n);
	if (type == MP_T_REPLY && n == W_HDR + MP_REPLY_FIXED) {
		int32_t err = (int32_t)get32(rep + W_HDR);
		rc = err > 0 && err < 4096 ? -err : -EPROTO;
		if (rc == -MP_REFUSED_ERRNO) { /* an answer, not an absence */
			S.refused = REFUSED_BY_ISOLATOR;
			S.refused_uid = (uint32_t)geteuid();
			S.refused_gid = (uint32_t)getegid();
		}
		if (rc == -EAGAIN)
			S.busy = 1; /* too many registrations at once: try again */
		goto fail;
	}
	if (type != MP_T_REGISTER_REPLY || n != W_HDR + MP_REGISTER_REPLY_FIXED || memfd < 0 ||
	    !(get32(rep + 12) & MP_FLAG_FD)) {
		rc = -EPROTO;
		goto fail;
	}
	r = &S.rings[S.next];
	if (r->base)
		mpring_detach(r); /* the session before last: long idle by now */
	rc = mpring_attach(r, memfd);
	REAL(close)(memfd);
	memfd = -1;
	if (rc < 0)
		goto fail;
	/* A daemon killed outright never marks the ring dead; its end of
	 * this connection closes, which waiting calls poll for. */
	mpring_set_peer(r, fd);
	S.next ^= 1;
	S.client = get64(rep + W_HDR);
	S.key = get64(rep + W_HDR + offsetof(struct mp_register_reply, key));
	S.regflags = 0;
	__atomic_store_n(&S.ring, r, __ATOMIC_RELEASE);
	MPLOG("registered with %s: client %llu", mp_conf.path, (unsigned long long)S.client);
	start_watcher();
	return 0;
fail:
	if (memfd >= 0)
		REAL(close)(memfd);
	drop_fd();
	return rc;
}

static int elapsed_1s(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec - t->tv_sec > 1 ||
	       (now.tv_sec - t->tv_sec == 1 && now.tv_nsec >= t->tv_nsec);
}

static int ensure_locked(void)
{
	int rc;

	if (S.ring && !mpring_is_dead(S.ring))
		return 0;
	if (S.ring) {
		/* The isolator went away: forget the session, keep the mapping.
		 * The next session rejoins the group under its key, and the
		 * listeners are made again there (docs/protocol.md). */
		__atomic_store_n(&S.ring, NULL, __ATOMIC_RELEASE);
		drop_fd();
		S.regflags = MP_REG_REJOIN;
		S.parent = 0;
		S.parent_key = S.key;
		S.lost = 1;
		S.failerr = 0;
		MPLOG("isolator session lost; registering again");
	}
	if (S.failerr && !elapsed_1s(&S.failed))
		return -S.failerr;
	S.refused = 0;
	S.busy = 0;
	rc = do_register();
	/* The isolator caps registrations in progress (a prefork server's
	 * children register in a burst): it answered, so try again soon. */
	for (int i = 0; rc == -EAGAIN && S.busy && i < 50; i++) {
		struct timespec ts = { 0, 20 * 1000000L };

		nanosleep(&ts, NULL);
		S.busy = 0;
		rc = do_register();
	}
	if (rc == 0 && S.lost) {
		S.lost = 0;
		S.relisten = 1;
	}
	if (rc < 0) {
		clock_gettime(CLOCK_MONOTONIC, &S.failed);
		S.failerr = -rc;
		if (rc == -MP_REFUSED_ERRNO && S.refused == REFUSED_BY_SOCKET)
			mp_warn_once(&S.refused_warned,
				     "refused by policy: uid %u (gid %u) may not connect to the "
				     "isolator's socket %s (its mode and group); network sockets fail "
				     "with %s (MPSHIM_FAIL=open does not apply to a refusal)",
				     S.refused_uid, S.refused_gid, mp_conf.path,
				     mp_errname(MP_REFUSED_ERRNO));
		else if (rc == -MP_REFUSED_ERRNO && S.refused)
			mp_warn_once(&S.refused_warned,
				     "refused by policy: the isolator at %s refuses uid %u "
				     "(gid %u); network sockets fail with %s (MPSHIM_FAIL=open does "
				     "not apply to a refusal)",
				     mp_conf.path, S.refused_uid, S.refused_gid,
				     mp_errname(MP_REFUSED_ERRNO));
		else if (mp_conf.fail_open)
			mp_warn_once(&S.warned,
				     "isolator unreachable at %s (%s); sockets stay on the kernel "
				     "(MPSHIM_FAIL=open)",
				     mp_conf.path, mp_errname(-rc));
		else
			mp_warn_once(&S.warned,
				     "isolator unreachable at %s (%s); network sockets fail with "
				     "ENETUNREACH (set MPSHIM_FAIL=open to use the kernel instead)",
				     mp_conf.path, mp_errname(-rc));
		return rc;
	}
	S.failerr = 0;
	return 0;
}

/* Runs mp_relisten once after a rejoin, outside S.mu (it makes calls). */
static void relisten_pending(void)
{
	if (__atomic_load_n(&S.relisten, __ATOMIC_ACQUIRE) &&
	    __atomic_exchange_n(&S.relisten, 0, __ATOMIC_ACQ_REL)) {
		mp_relisten();
		MPLOG("listeners made again under client %llu", (unsigned long long)S.client);
		mp_opt_flush();
	}
}

/* ---- the session watcher ---------------------------------------------------
 * One thread per registered process (started with its first session; a
 * fork child starts its own) waits for the registration connection to hang
 * up, which is how the death of the daemon shows (a daemon killed outright
 * never marks the ring dead), and then registers again every
 * MPS_RETRY_MS until a daemon answers, so that an idle server, which makes
 * no call that would notice, gets its listeners back as soon as the
 * daemon is back. It blocks every signal and touches nothing of the app's. */

#define MPS_RETRY_MS 100

static void *watcher_main(void *arg)
{
	sigset_t all;

	(void)arg;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	for (;;) {
		int fd = __atomic_load_n(&S.fd, __ATOMIC_RELAXED), rc;
		struct mpring *r;

		if (fd >= 0) {
			struct pollfd p = { .fd = fd, .events = POLLRDHUP };

			/* A timeout: S.fd may move (mps_evict) while polled. */
			if (poll(&p, 1, 1000) <= 0)
				continue;
			if (!(p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))) {
				/* Unread data (the daemon sends none after
				 * the RegisterReply): do not spin on it. */
				struct timespec ts = { 0, MPS_RETRY_MS * 1000000L };
				nanosleep(&ts, NULL);
				continue;
			}
		} else {
			struct timespec ts = { 0, MPS_RETRY_MS * 1000000L };
			nanosleep(&ts, NULL);
		}
		pthread_mutex_lock(&S.mu);
		r = S.ring;
		if (r && !mpring_is_dead(r) && !mpring_peer_gone(r)) {
			pthread_mutex_unlock(&S.mu);
			continue;
		}
		S.failerr = 0; /* no back-off here: retry every MPS_RETRY_MS */
		rc = ensure_locked();
		pthread_mutex_unlock(&S.mu);
		if (rc == 0)
			relisten_pending();
		if (rc == -MP_REFUSED_ERRNO) {
			/* Refused by policy: no use asking ten times a second. */
			struct timespec ts = { 1, 0 };
			nanosleep(&ts, NULL);
		}
	}
	return NULL;
}

/* Starts the watcher of this process once; called with S.mu held. */
static void start_watcher(void)
{
	pthread_attr_t a;
	pthread_t t;
	pid_t me = getpid();

	if (S.watcher == me)
		return;
	if (pthread_attr_init(&a) != 0)
		return;
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&a, 64 * 1024);
	if (pthread_create(&t, &a, watcher_main, NULL) == 0)
		S.watcher = me;
	pthread_attr_destroy(&a);
}

int mps_available(void)
{
	struct mpring *r = __atomic_load_n(&S.ring, __ATOMIC_ACQUIRE);
	int rc;
	MP_SAVE;

	if (r && !mpring_is_dead(r))
		return 0;
	pthread_mutex_lock(&S.mu);
	rc = ensure_locked();
	pthread_mutex_unlock(&S.mu);
	if (rc == 0)
		relisten_pending();
	MP_RESTORE;
	return rc;
}

/* ---- calls ---------------------------------------------------------------- */

static int callv(const struct iovec *iov, int iovcnt, size_t len, uint16_t type, int fd_b,
		 unsigned char *rep, size_t cap, size_t *rlen);

/* A descriptor to pass ahead of request id. */
struct fdpass {
	uint64_t id;
	int fd;
};

/* Sends the header-only FDPass of a request on the registration
 * connection. mpring_callv_prepared runs it once the request holds its
 * response slot: a request waiting for a slot (more threads in calls than
 * the ring has slots, or slots held by blocking connects) must not leave
 * its descriptor waiting at the isolator, which drops descriptors whose
 * request does not follow within a second and holds at most twice the
 * slot count of them. */
static int send_fdpass(void *arg)
{
	const struct fdpass *p = arg;
	unsigned char fp[W_HDR + MP_FD_PASS_FIXED] = { 0 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} cm;
	struct iovec iov = { fp, sizeof fp };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cm.buf, .msg_controllen = sizeof cm.buf };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

	hdr_put(fp, MP_T_FD_PASS, sizeof fp, MP_FLAG_FD, p->id);
	put32(fp + W_HDR + offsetof(struct mp_fd_pass, count), 1);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &p->fd, sizeof p->fd);
	if (REAL(sendmsg)(__atomic_load_n(&S.fd, __ATOMIC_RELAXED), &mh, MSG_NOSIGNAL) < 0)
		return -EPIPE;
	return 0;
}

/* Sends req (header filled here) and waits for the reply. fd_b >= 0 travels
 * ahead in an FDPass. Returns the reply type or -errno. */
static int call(unsigned char *req, size_t len, uint16_t type, int fd_b, unsigned char *rep,
		size_t cap, size_t *rlen)
{
	struct iovec v = { req, len };

	return callv(&v, 1, len, type, fd_b, rep, cap, rlen);
}

/* As call with the request gathered from iov (len bytes in all; the header
 * is written into iov[0], which must hold at least the header). */
static int callv(const struct iovec *iov, int iovcnt, size_t len, uint16_t type, int fd_b,
		 unsigned char *rep, size_t cap, size_t *rlen)
{
	struct mpring *r;
	uint64_t id;
	int rc;

	if ((rc = mps_available()) < 0)
		return rc == -MP_REFUSED_ERRNO ? rc : -MP_FAIL_ERRNO;
	r = __atomic_load_n(&S.ring, __ATOMIC_ACQUIRE);
	if (!r)
		return -MP_FAIL_ERRNO;
	id = __atomic_add_fetch(&S.reqid, 1, __ATOMIC_RELAXED);
	hdr_put(iov[0].iov_base, type, len, fd_b >= 0 ? MP_FLAG_FD : 0, id);
	if (fd_b >= 0) {
		struct fdpass fp = { .id = id, .fd = fd_b };

		rc = mpring_callv_prepared(r, iov, iovcnt, rep, cap, rlen, send_fdpass, &fp);
	} else {
		rc = mpring_callv(r, iov, iovcnt, rep, cap, rlen);
	}
	if (rc == -EPIPE || rc == -EBADF)
		return -MP_FAIL_ERRNO;
	if (rc < 0)
		return rc;
	rc = hdr_check(rep, *rlen);
	if (rc < 0 || get64(rep + 16) != id)
		return -EPROTO;
	if (rc == MP_T_REPLY) {
		int32_t err;
		if (*rlen != W_HDR + MP_REPLY_FIXED)
			return -EPROTO;
		err = (int32_t)get32(rep + W_HDR);
		if (err < 0 || err > (int32_t)MP_MAX_ERRNO)
			return -EPROTO;
		if (err)
			return -err;
	}
	return rc;
}

/* Calls that expect a plain Reply. */
static int call_reply(unsigned char *req, size_t len, uint16_t type, int fd_b)
{
	unsigned char rep[W_HDR + 64];
	size_t rlen = 0;
	int rc = call(req, len, type, fd_b, rep, sizeof rep, &rlen);

	if (rc < 0)
		return rc;
	return rc == MP_T_REPLY ? 0 : -EPROTO;
}

int mps_socket(int domain, int type, int protocol, int fd_b, uint64_t *sock)
{
	unsigned char req[W_HDR + 12], rep[W_HDR + 64];
	size_t rlen = 0;
	int rc;

	put32(req + W_HDR, (uint32_t)domain);
	put32(req + W_HDR + 4, (uint32_t)type);
	put32(req + W_HDR + 8, (uint32_t)protocol);
	rc = call(req, sizeof req, MP_T_SOCKET, fd_b, rep, sizeof rep, &rlen);
	if (rc < 0)
		return rc;
	if (rc != MP_T_SOCKET_REPLY || rlen != W_HDR + MP_SOCKET_REPLY_FIXED)
		return -EPROTO;
	*sock = get64(rep + W_HDR);
	return 0;
}

int mps_bind(uint64_t sock, const struct sockaddr *sa, socklen_t len)
{
	unsigned char req[W_HDR + 40];
	int rc;

	memset(req, 0, sizeof req);
	put64(req + W_HDR, sock);
	if ((rc = mps_addr_put(req + W_HDR + 8, sa, len)) < 0)
		return rc;
	return call_reply(req, sizeof req, MP_T_BIND, -1);
}

int mps_listen(uint64_t sock, int backlog, int fd_b)
{
	unsigned char req[W_HDR + 16];

	memset(req, 0, sizeof req);
	put64(req + W_HDR, sock);
	put32(req + W_HDR + 8, (uint32_t)backlog);
	return call_reply(req, sizeof req, MP_T_LISTEN, fd_b);
}

static uint16_t connect_gen;

uint16_t mps_connect_gen(void)
{
	return __atomic_load_n(&connect_gen, __ATOMIC_ACQUIRE);
}

ssize_t mps_sendto(uint64_t sock, const struct msghdr *msg, size_t total, int flags)
{
	unsigned char req[W_HDR + MP_SEND_TO_FIXED], rep[W_HDR + 64];
	struct iovec v[1 + UIO_MAXIOV];
	size_t rlen = 0;
	int rc;

	if (msg->msg_iovlen > UIO_MAXIOV)
		return -EMSGSIZE;
	memset(req, 0, sizeof req);
	put64(req + W_HDR + offsetof(struct mp_send_to, sock), sock);
	put32(req + W_HDR + offsetof(struct mp_send_to, flags), (uint32_t)flags);
	rc = mps_addr_put(req + W_HDR + offsetof(struct mp_send_to, addr),
			  msg->msg_namelen ? msg->msg_name : NULL, msg->msg_namelen);
	if (rc < 0)
		return rc;
	put32(req + W_HDR + offsetof(struct mp_send_to, payload_len), (uint32_t)total);
	v[0].iov_base = req;
	v[0].iov_len = sizeof req;
	for (size_t i = 0; i < msg->msg_iovlen; i++)
		v[1 + i] = msg->msg_iov[i];
	rc = callv(v, 1 + (int)msg->msg_iovlen, sizeof req + total, MP_T_SEND_TO, -1, rep,
		   sizeof rep, &rlen);
	if (rc < 0)
		return rc;
	if (rc != MP_T_REPLY)
		return -EPROTO;
	return (ssize_t)get64(rep + W_HDR + offsetof(struct mp_reply, value));
}

int mps_connect(uint64_t sock, const struct sockaddr *sa, socklen_t len, int nonblock,
		uint32_t filler)
{
	/* Sock u64, Addr, Flags u32, Filler u32, pad u32. */
	unsigned char req[W_HDR + MP_CONNECT_FIXED];
	int rc;

	memset(req, 0, sizeof req);
	put64(req + W_HDR, sock);
	if ((rc = mps_addr_put(req + W_HDR + 8, sa, len)) < 0)
		return rc;
	put32(req + W_HDR + offsetof(struct mp_connect, flags), nonblock ? MP_CONNECT_NONBLOCK : 0);
	put32(req + W_HDR + offsetof(struct mp_connect, filler), filler);
	/* Before and after: a datagram send racing with this connect must
	 * not take the fast path on the strength of the old peer. */
	__atomic_add_fetch(&connect_gen, 1, __ATOMIC_ACQ_REL);
	rc = call_reply(req, sizeof req, MP_T_CONNECT, -1);
	__atomic_add_fetch(&connect_gen, 1, __ATOMIC_ACQ_REL);
	return rc;
}

int mps_setsockopt(uint64_t sock, int level, int name, const void *val, socklen_t len)
{
	unsigned char req[W_HDR + 24 + W_MAX_OPT];

	if (len > W_MAX_OPT)
		return -EINVAL;
	memset(req, 0, W_HDR + 24);
	put64(req + W_HDR, sock);
	put32(req + W_HDR + 8, (uint32_t)level);
	put32(req + W_HDR + 12, (uint32_t)name);
	put32(req + W_HDR + 16, len);
	if (len)
		memcpy(req + W_HDR + 24, val, len);
	return call_reply(req, W_HDR + 24 + len, MP_T_SETSOCKOPT, -1);
}

int mps_getsockopt(uint64_t sock, int level, int name, void *val, socklen_t *len)
{
	unsigned char req[W_HDR + 24], rep[W_HDR + 4 + W_MAX_OPT];
	size_t rlen = 0;
	uint32_t n;
	int rc;

	memset(req, 0, sizeof req);
	put64(req + W_HDR, sock);
	put32(req + W_HDR + 8, (uint32_t)level);
	put32(req + W_HDR + 12, (uint32_t)name);
	put32(req + W_HDR + 16, *len > W_MAX_OPT ? W_MAX_OPT : *len);
	rc = call(req, sizeof req, MP_T_GETSOCKOPT, -1, rep, sizeof rep, &rlen);
	if (rc < 0)
		return rc;
	if (rc != MP_T_OPT_REPLY || rlen < W_HDR + MP_OPT_REPLY_FIXED)
		return -EPROTO;
	n = get32(rep + W_HDR);
	if (n != rlen - W_HDR - 4 || n > *len)
		return -EPROTO;
	memcpy(val, rep + W_HDR + 4, n);
	*len = n;
	return 0;
}

int mps_getname(uint64_t sock, int peer, struct sockaddr *sa, socklen_t *len)
{
	unsigned char req[W_HDR + 8], rep[W_HDR + 64];
	size_t rlen = 0;
	int rc;

	put64(req + W_HDR, sock);
	rc = call(req, sizeof req, peer ? MP_T_GETPEERNAME : MP_T_GETSOCKNAME, -1, rep, sizeof rep,
		  &rlen);
	if (rc < 0)
		return rc;
	if (rc != MP_T_ADDR_REPLY || rlen != W_HDR + MP_ADDR_REPLY_FIXED)
		return -EPROTO;
	return mps_addr_get(rep + W_HDR, sa, len) < 0 ? -EPROTO : 0;
}

int mps_shutdown(uint64_t sock, int how)
{
	unsigned char req[W_HDR + 16];

	memset(req, 0, sizeof req);
	put64(req + W_HDR, sock);
	put32(req + W_HDR + 8, (uint32_t)how);
	return call_reply(req, sizeof req, MP_T_SHUTDOWN, -1);
}

int mps_close(uint64_t sock)
{
	unsigned char req[W_HDR + MP_CLOSE_FIXED];

	memset(req, 0, sizeof req);
	put64(req + W_HDR + offsetof(struct mp_close, sock), sock);
	return call_reply(req, sizeof req, MP_T_CLOSE, -1);
}

int mps_ioctl_int(uint64_t sock, unsigned long request, int *out)
{
	unsigned char req[W_HDR + 24 + sizeof(int)], rep[W_HDR + 16 + W_MAX_OPT];
	size_t rlen = 0;
	int rc;

	memset(req, 0, sizeof req);
	put64(req + W_HDR, sock);
	put64(req + W_HDR + 8, request);
	put32(req + W_HDR + 16, sizeof(int));
	memcpy(req + W_HDR + 24, out, sizeof(int));
	rc = call(req, sizeof req, MP_T_IOCTL, -1, rep, sizeof rep, &rlen);
	if (rc < 0)
		return rc;
	if (rc != MP_T_IOCTL_REPLY || rlen != W_HDR + MP_IOCTL_REPLY_FIXED + sizeof(int) ||
	    get32(rep + W_HDR + 8) != sizeof(int))
		return -EPROTO;
	memcpy(out, rep + W_HDR + 16, sizeof(int));
	return (int)(int64_t)get64(rep + W_HDR);
}

/* A call whose message another file encodes (resolve.c: Resolve). */
int mps_call(unsigned char *req, size_t len, uint16_t type, unsigned char *rep, size_t cap,
	     size_t *rlen)
{
	return call(req, len, type, -1, rep, cap, rlen);
}

/* ---- fork and exec -------------------------------------------------------- */

void mps_atfork_prepare(void)
{
	pthread_mutex_lock(&S.mu);
}

void mps_atfork_parent(void)
{
	pthread_mutex_unlock(&S.mu);
}

void mps_atfork_child(void)
{
	struct mpring *r = S.ring;
	MP_SAVE;

	pthread_mutex_init(&S.mu, NULL);
	if (!r) {
		/* Never registered, or the isolator was gone: stay lazy. The
		 * dead ring of an earlier session is still mapped; drop it. */
		for (int i = 0; i < 2; i++)
			if (S.rings[i].base)
				mpring_detach(&S.rings[i]);
		drop_fd();
		MP_RESTORE;
		return;
	}
	S.ring = NULL;
	for (int i = 0; i < 2; i++)
		if (S.rings[i].base)
			mpring_detach(&S.rings[i]);
	drop_fd();
	S.parent = S.client;
	S.parent_key = S.key;
	S.regflags = MP_REG_FORKED;
	S.failerr = 0;
	/* Eagerly, before the app can drop privileges. */
	ensure_locked();
	MP_RESTORE;
}

/* MPSHIM_FDS=fd:sock:kind,... with kind s4 s6 l4 l6 d4 d6 (stream, listener,
 * datagram; v4 or v6), MPSHIM_CLIENT=<client id>:<group key> of the previous
 * image. */
void mps_adopt_env(void)
{
	const char *v = getenv("MPSHIM_FDS"), *c = getenv("MPSHIM_CLIENT");
	int adopted = 0;
	char *end;

	if (!v || !*v)
		goto out;
	while (*v) {
		long fd;
		unsigned long long sock;
		char k, fam;
		int want, dom = 0, typ = 0;
		socklen_t l = sizeof dom;
		struct mp_fd *e;

		fd = strtol(v, &end, 10);
		if (end == v || *end != ':')
			break;
		v = end + 1;
		sock = strtoull(v, &end, 10);
		if (end == v || *end != ':' || !end[1] || !end[2])
			break;
		k = end[1];
		fam = end[2];
		v = end + 3;
		if (*v == ',')
			v++;
		want = k == 's' ? SOCK_STREAM : SOCK_SEQPACKET;
		if (REAL(getsockopt)((int)fd, SOL_SOCKET, SO_DOMAIN, &dom, &l) < 0 || dom != AF_UNIX)
			continue;
		l = sizeof typ;
		if (REAL(getsockopt)((int)fd, SOL_SOCKET, SO_TYPE, &typ, &l) < 0 || typ != want)
			continue;
		if (!(e = mp_slot((int)fd)))
			continue;
		memset(e, 0, sizeof *e);
		e->kind = k == 's' ? MPK_STREAM : k == 'l' ? MPK_LISTEN : MPK_DGRAM;
		e->type = k == 'd' ? SOCK_DGRAM : SOCK_STREAM;
		e->domain = fam == '6' ? AF_INET6 : AF_INET;
		e->sock = sock;
		adopted++;
	}
	if (adopted) {
		S.parent = c ? strtoull(c, &end, 10) : 0;
		S.parent_key = c && *end == ':' ? strtoull(end + 1, NULL, 10) : 0;
		S.regflags = MP_REG_EXECED;
		pthread_mutex_lock(&S.mu);
		ensure_locked();
		pthread_mutex_unlock(&S.mu);
	}
out:
	unsetenv("MPSHIM_FDS");
	unsetenv("MPSHIM_CLIENT");
}
