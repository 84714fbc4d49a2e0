/*
 * shim.h: internal interface of libmpshim.so, the preloaded C library that
 * serves the AF_INET/AF_INET6 sockets of an unmodified program from the
 * isolator's network stacks (INS). See docs/protocol.md for the session with
 * the isolator and shim/README.md for the policy and its edge cases.
 *
 * Rules every file follows: no malloc on any interposed path, errno exactly
 * preserved (MP_SAVE/MP_RESTORE around bookkeeping and logging), only the
 * resolved real functions (mp_real) are called for the wrapped symbols, and
 * nothing here may run code that is unsafe in a fork child.
 */
#ifndef MPSHIM_SHIM_H
#define MPSHIM_SHIM_H

#include <errno.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#define MP_EXPORT __attribute__((visibility("default")))
#define MP_HIDDEN __attribute__((visibility("hidden")))

/* ---- real symbols (symbols.c) ------------------------------------------ */

#define MP_REAL_LIST(X)                                                              \
	X(int, socket, (int, int, int))                                              \
	X(int, bind, (int, const struct sockaddr *, socklen_t))                      \
	X(int, listen, (int, int))                                                   \
	X(int, accept, (int, struct sockaddr *, socklen_t *))                        \
	X(int, accept4, (int, struct sockaddr *, socklen_t *, int))                  \
	X(int, connect, (int, const struct sockaddr *, socklen_t))                   \
	X(int, getsockname, (int, struct sockaddr *, socklen_t *))                   \
	X(int, getpeername, (int, struct sockaddr *, socklen_t *))                   \
	X(int, getsockopt, (int, int, int, void *, socklen_t *))                     \
	X(int, setsockopt, (int, int, int, const void *, socklen_t))                 \
	X(int, shutdown, (int, int))                                                 \
	X(int, close, (int))                                                         \
	X(int, ioctl, (int, unsigned long, ...))                                     \
	X(int, fcntl, (int, int, ...))                                               \
	X(int, fcntl64, (int, int, ...))                                             \
	X(int, dup, (int))                                                           \
	X(int, dup2, (int, int))                                                     \
	X(int, dup3, (int, int, int))                                                \
	X(int, close_range, (unsigned int, unsigned int, int))                       \
	X(void, closefrom, (int))                                                    \
	X(ssize_t, send, (int, const void *, size_t, int))                           \
	X(ssize_t, recv, (int, void *, size_t, int))                                 \
	X(ssize_t, sendto, (int, const void *, size_t, int, const struct sockaddr *, \
			    socklen_t))                                              \
	X(ssize_t, recvfrom, (int, void *, size_t, int, struct sockaddr *,           \
			      socklen_t *))                                          \
	X(ssize_t, sendmsg, (int, const struct msghdr *, int))                       \
	X(ssize_t, recvmsg, (int, struct msghdr *, int))                             \
	X(int, sendmmsg, (int, struct mmsghdr *, unsigned int, int))                 \
	X(int, recvmmsg, (int, struct mmsghdr *, unsigned int, int,                  \
			  struct timespec *))                                        \
	X(ssize_t, __recv_chk, (int, void *, size_t, size_t, int))                   \
	X(ssize_t, __recvfrom_chk, (int, void *, size_t, size_t, int,                \
				    struct sockaddr *, socklen_t *))                 \
	X(int, epoll_ctl, (int, int, int, struct epoll_event *))                     \
	X(pid_t, fork, (void))                                                       \
	X(int, execve, (const char *, char *const[], char *const[]))                 \
	X(int, execvpe, (const char *, char *const[], char *const[]))                \
	X(int, fexecve, (int, char *const[], char *const[]))                         \
	X(int, execveat, (int, const char *, char *const[], char *const[], int))     \
	X(int, posix_spawn, (pid_t *, const char *, const posix_spawn_file_actions_t *, \
			     const posix_spawnattr_t *, char *const[], char *const[]))   \
	X(int, posix_spawnp, (pid_t *, const char *, const posix_spawn_file_actions_t *, \
			      const posix_spawnattr_t *, char *const[], char *const[]))  \
	X(int, socketpair, (int, int, int, int[2]))                                   \
	X(ssize_t, read, (int, void *, size_t))                                      \
	X(ssize_t, write, (int, const void *, size_t))                               \
	X(ssize_t, readv, (int, const struct iovec *, int))                          \
	X(ssize_t, writev, (int, const struct iovec *, int))

#define MP_DECL_REAL(ret, name, args) ret(*name) args;
struct mp_real {
	MP_REAL_LIST(MP_DECL_REAL)
};
#undef MP_DECL_REAL

MP_HIDDEN extern struct mp_real mp_real;
MP_HIDDEN extern int mp_ready; /* constructor (or early init) done */
MP_HIDDEN void mp_init(void);  /* idempotent; safe before the constructor */

/* Real function, resolved on first use if called before the constructor. */
#define REAL(name) (__builtin_expect(mp_ready, 1) ? mp_real.name : (mp_init(), mp_real.name))

/* ---- errno helpers ------------------------------------------------------ */

#define MP_SAVE int mp_saved_errno_ = errno
#define MP_RESTORE (errno = mp_saved_errno_)
/* Return -1 with errno set to e (e > 0). */
static inline int mp_fail(int e)
{
	errno = e;
	return -1;
}

/* ---- the fd table (fdtable.c) ------------------------------------------ */

enum mp_kind {
	MPK_NONE = 0,  /* not ours: plain kernel fd */
	MPK_PENDING,   /* kernel AF_INET/AF_INET6 TCP/UDP socket, destiny undecided */
	MPK_STREAM,    /* INS TCP socket: AF_UNIX SOCK_STREAM end */
	MPK_LISTEN,    /* INS listening socket: AF_UNIX SOCK_SEQPACKET end */
	MPK_DGRAM,     /* INS UDP socket: AF_UNIX SOCK_SEQPACKET end, framed */
	MPK_INTERNAL,  /* the shim's own descriptors: the registration connection
			* (type 0) and listener keepers (type MP_INTERNAL_KEEP) */
};

/* lflags of a listener: what mp_relisten sets again. optmask holds the
 * listener's backlog. */
#define MPL_BOUND 0x01u     /* laddr/lport are known */
#define MPL_V6ONLY 0x02u    /* IPV6_V6ONLY was on */
#define MPL_REUSEPORT 0x04u /* SO_REUSEPORT was on */
#define MPL_SHUT 0x08u      /* shut down (SHUT_RD) and not listening again: accept says EINVAL */

/* type of an MPK_INTERNAL entry that keeps a listener's far end open; its
 * sock is the listener's socket id. */
#define MP_INTERNAL_KEEP 1

/* Entry flags. */
#define MPF_FILLER 0x01u   /* non-blocking connect in flight: SO_SNDBUF lowered */
#define MPF_UNKNOWN 0x02u  /* pending socket got an option we cannot replay */
#define MPF_EPOLL 0x04u    /* pending socket is registered in an epoll set */
#define MPF_DEST4 0x08u    /* MPK_DGRAM: dest holds a validated IPv4 destination */
#define MPF_DEST6 0x10u    /* MPK_DGRAM: dest holds a validated IPv6 destination */
#define MPF_DGPEER 0x20u   /* MPK_DGRAM: a send to the connected peer succeeded (dest.gen) */
#define MPF_CORK 0x40u     /* MPK_STREAM: TCP_CORK is set (kept here; see opts.c) */
#define MPF_DGCTL 0x40u    /* MPK_DGRAM: an option asked for control data on receive, so a
			    * datagram may carry a control block (dgram.c; MPF_CORK's bit) */
#define MPF_UNATTACHED 0x80u /* MPK_STREAM: never connected; only the first non-blocking
			      * connect may fill the socketpair (later ones would put the
			      * filler into a live stream) */

/* The destination of the last datagram an INS UDP socket sent through the
 * ring successfully (dgram.c): later datagrams to it take the socketpair. */
struct mp_dgdest {
	uint8_t addr[16];  /* IPv4 in the first 4 bytes */
	uint32_t scope;    /* IPv6 scope id */
	uint16_t port;     /* host order */
	uint16_t gen;      /* MPF_DGPEER: mps_connect_gen() when it was set */
};

struct mp_fd {
	uint8_t kind;      /* enum mp_kind */
	uint8_t flags;     /* MPF_* */
	uint16_t domain;   /* AF_INET or AF_INET6 */
	int32_t type;      /* SOCK_STREAM or SOCK_DGRAM (no flag bits) */
	int32_t protocol;
	uint32_t optmask;  /* pending: which replayable options were set */
	uint64_t sock;     /* isolator socket id (INS kinds) */
	union {
		struct {
			int32_t sndbuf;    /* MPF_FILLER: the SO_SNDBUF value to restore */
			int32_t epfd;      /* MPF_EPOLL: the epoll set */
			uint64_t epdata;   /* MPF_EPOLL: registration data */
			uint32_t epevents; /* MPF_EPOLL: registration events */
			uint32_t pad;
		};
		struct mp_dgdest dest; /* MPK_DGRAM: MPF_DEST4, MPF_DEST6, MPF_DGPEER */
		struct {                   /* MPK_LISTEN (see mp_relisten) */
			int32_t keep;      /* its keeper (mp_keep_*), 0 when none */
			uint16_t lport;    /* the bound port, host order */
			uint8_t lflags;    /* MPL_* */
			uint8_t lpad;
			uint8_t laddr[16]; /* the bound address (IPv4: first 4 bytes) */
		};
	};
};

MP_HIDDEN extern struct mp_fd *mp_table;
MP_HIDDEN extern unsigned int mp_table_size;
MP_HIDDEN extern unsigned int mp_table_hiwat; /* one past the highest fd ever set */

void mp_table_init(void);
/* Entry of fd when it is one of ours, NULL otherwise: the only cost a
 * foreign fd pays on an interposed call. */
static inline struct mp_fd *mp_get(int fd)
{
	struct mp_fd *e;

	if (__builtin_expect((unsigned int)fd >= mp_table_size, 0))
		return NULL;
	e = &mp_table[fd];
	return e->kind ? e : NULL;
}
struct mp_fd *mp_slot(int fd); /* writable entry, NULL when out of range */
void mp_clear(int fd);
void mp_copy(int from, int to); /* to becomes what from is (cleared if not ours) */
void mp_clear_range(unsigned int first, unsigned int last);
int mp_is_ins(const struct mp_fd *e);

/* Moves an INS UDP socket bound to the wildcard to a kernel socket on the
 * same port, connected to sa when set (socket.c). 0 when moved, else -1. */
int mp_dgram_to_kernel(int fd, struct mp_fd *e, const struct sockaddr *sa, socklen_t len);

/* ---- policy and environment (symbols.c) -------------------------------- */

struct mp_conf {
	int log;           /* MPSHIM_LOG=debug */
	int fail_open;     /* MPSHIM_FAIL=open */
	int loopback_ins;  /* MPSHIM_LOOPBACK=ins */
	char path[108];    /* MPSHIM_SOCKET */
};
MP_HIDDEN extern struct mp_conf mp_conf;

/* errno of a call that must reach the INS while the isolator is
 * unreachable and the policy is fail closed. */
#define MP_FAIL_ERRNO ENETUNREACH

/* errno of every call that needs the INS once the isolator has refused
 * this process by policy (RegisterRefused: its uid/gid is not admitted; or
 * the registration socket's permissions deny it). A refusal is not an
 * absence: MPSHIM_FAIL=open never applies to it. */
#define MP_REFUSED_ERRNO EACCES

/* ---- logging (log.c) ---------------------------------------------------- */

void mp_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void mp_warn_once(int *once, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *mp_errname(int e);
/* Formats sa into buf ("10.0.0.1:80", "[::1]:80", "unix", "af=N"). */
const char *mp_fmt_addr(char *buf, size_t len, const struct sockaddr *sa, socklen_t salen);
/* Logs "name(args) = ret" (with errno name when ret < 0); errno preserved. */
#define MPLOG(...)                                   \
	do {                                         \
		if (__builtin_expect(mp_conf.log, 0)) \
			mp_log(__VA_ARGS__);         \
	} while (0)

/* ---- the isolator session (session.c) ----------------------------------
 * Every function returns 0 (or a non-negative value) on success and -errno
 * on failure: either the isolator's Reply.Errno or, when the isolator
 * cannot be reached, -MP_FAIL_ERRNO (the caller consults mp_conf.fail_open
 * through mps_available before it converts a socket). */

/* 0 when a session is up (registering now if needed); -MP_REFUSED_ERRNO
 * when the isolator refused this process by policy; another -errno when it
 * cannot be reached (the only case MPSHIM_FAIL=open applies to). */
int mps_available(void);
int mps_socket(int domain, int type, int protocol, int fd_b, uint64_t *sock);
int mps_bind(uint64_t sock, const struct sockaddr *sa, socklen_t len);
int mps_listen(uint64_t sock, int backlog, int fd_b);
int mps_connect(uint64_t sock, const struct sockaddr *sa, socklen_t len, int nonblock,
		uint32_t filler);
int mps_setsockopt(uint64_t sock, int level, int name, const void *val, socklen_t len);
int mps_getsockopt(uint64_t sock, int level, int name, void *val, socklen_t *len);
int mps_getname(uint64_t sock, int peer, struct sockaddr *sa, socklen_t *len);
int mps_shutdown(uint64_t sock, int how);
int mps_ioctl_int(uint64_t sock, unsigned long req, int *out);
/* One ring call of a message encoded elsewhere: req holds len bytes, the
 * header is (re)written here; rep receives the reply. Returns the reply
 * type, or -errno (a Reply's errno, or -MP_FAIL_ERRNO when the isolator
 * cannot be reached). */
int mps_call(unsigned char *req, size_t len, uint16_t type, unsigned char *rep, size_t cap,
	     size_t *rlen);

/* Tells the isolator that the app closed its descriptor of sock. */
int mps_close(uint64_t sock);

/* Wire address block <-> sockaddr. mps_addr_size is its size in bytes. */
#define MPS_ADDR_SIZE 28
int mps_addr_put(unsigned char *wire, const struct sockaddr *sa, socklen_t len);
/* Writes the address to sa truncated to *len and sets *len to its full
 * size, as the kernel does. Returns -EINVAL for an unknown family. */
int mps_addr_get(const unsigned char *wire, struct sockaddr *sa, socklen_t *len);

/* Datagram framing on a UDP socket's SEQPACKET pair (docs/protocol.md):
 * the fixed body of msgproto's Datagram (struct mp_datagram,
 * MP_DATAGRAM_FIXED bytes; address, flags, payload length) followed by the
 * payload. */
#define MPS_DGRAM_FRAMING 36
struct mps_dgram_framing {
	unsigned char b[MPS_DGRAM_FRAMING];
};
/* Encodes the framing of a datagram of plen bytes to sa (NULL: the
 * connected peer). Returns 0, -EINVAL or -EAFNOSUPPORT. */
int mps_dgram_put(struct mps_dgram_framing *f, const struct sockaddr *sa, socklen_t len,
		  uint32_t flags, uint32_t plen);
/* Decodes received framing: the sender goes to sa as mps_addr_get does.
 * Returns 0 or -EPROTO for malformed framing. */
int mps_dgram_get(const struct mps_dgram_framing *f, struct sockaddr *sa, socklen_t *len);
/* Sends msg's datagram (total payload bytes) through the ring, errno
 * synchronous: the byte count or -errno. */
ssize_t mps_sendto(uint64_t sock, const struct msghdr *msg, size_t total, int flags);
/* Changes whenever any socket of the process connects (mps_connect). */
uint16_t mps_connect_gen(void);

/* Parse an AcceptNotify received on a listener. Returns 0 or -EPROTO. */
int mps_accept_parse(const void *msg, size_t len, uint64_t *sock, const unsigned char **peer,
		     const unsigned char **local);
#define MPS_ACCEPT_MSG_MAX 256

/* fork/exec plumbing. */
void mps_atfork_prepare(void);
void mps_atfork_parent(void);
void mps_atfork_child(void);
void mps_adopt_env(void);  /* constructor: adopt MPSHIM_FDS */
int mps_is_internal_fd(int fd);
int mps_internal_fd(void); /* the registration fd, -1 when none */
/* Moves the registration fd away from fd if it sits there. */
void mps_evict(int fd);
/* Moves fd (close-on-exec) to a high number out of the app's way; returns
 * the new number (fd is closed) or fd itself when it cannot move. */
int mps_high_fd(int fd);
uint64_t mps_client_id(void);
uint64_t mps_client_key(void);

/* ---- socket.c helpers used by other files ------------------------------ */

/* Listener keepers: every INS listener's SEQPACKET end has its far end
 * held by the app itself as well, high and close-on-exec, so the listener
 * never reads end-of-file (and is never readable without a connection to
 * accept) when the isolator or every INS is gone. mp_keep_release drops
 * listener fd's keeper unless another listener entry shares it;
 * mp_keep_evict moves a keeper sitting on fd away (the app dup2s onto it);
 * mp_keep_forget_range forgets the keepers among [first, last] (about to be
 * closed natively). */
void mp_keep_release(int fd, struct mp_fd *e);
void mp_keep_evict(int fd);
void mp_keep_forget_range(unsigned int first, unsigned int last);

/* After the session was re-established with a new isolator daemon (the
 * old one died): makes every listener of the process listen again, on the
 * same descriptor, with a new socket bound to the address it had (the
 * keeper's end is handed over as the INS end). */
void mp_relisten(void);

/* Settles a finished non-blocking connect (restores SO_SNDBUF). */
void mp_settle(int fd, struct mp_fd *e);
/* Is the address one that stays on the kernel by policy? */
int mp_addr_kernel(const struct sockaddr *sa, socklen_t len);
/* Is the destination one that stays on the kernel (loopback, and the
 * unspecified address that Linux takes for loopback)? */
int mp_dst_kernel(const struct sockaddr *sa, socklen_t len);
/* Converts a pending socket to an INS socket. 0, or -1 with errno set; 1
 * when the policy keeps it on the kernel (fail open). */
int mp_convert(int fd, struct mp_fd *e);
/* recv(MSG_TRUNC) on an INS stream: the bytes are discarded (counted, with
 * MSG_PEEK) and not copied, as by Linux's TCP. */
ssize_t mp_stream_recv_trunc(int fd, size_t len, int flags);

/* dgram.c */
ssize_t mp_dgram_sendmsg(int fd, struct mp_fd *e, const struct msghdr *msg, int flags);
ssize_t mp_dgram_recvmsg(int fd, struct mp_fd *e, struct msghdr *msg, int flags);

/* opts.c: replayable options of pending sockets */
void mp_opt_note(struct mp_fd *e, int level, int name);
/* Replays the noted options of pending socket kfd to sock; returns the
 * MPF_* flags the converted entry takes from them (MPF_CORK). */
int mp_opt_replay(int kfd, struct mp_fd *e, uint64_t sock, int newfd);
/* Whether an option asks a UDP socket for control data on receive
 * (IP_PKTINFO, IP_RECVTOS, ...; MPF_DGCTL). */
int mp_recv_ctl_opt(int level, int name);
int mp_opt_local(int level, int name);
/* Sets the options streams took while no isolator ran (opts.c, deferrable)
 * on their INS sockets; run after a rejoin. */
void mp_opt_flush(void);

#endif /* MPSHIM_SHIM_H */
