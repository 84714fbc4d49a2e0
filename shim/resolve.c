//go:build ignore

/*
 * resolve.c: host name lookups through the INS. getaddrinfo, getnameinfo,
 * gethostbyname, gethostbyname2, gethostbyname_r, gethostbyname2_r,
 * gethostbyaddr, gethostbyaddr_r.
 *
 * glibc's resolver makes its socket calls inside libc, where no preload
 * reaches them, and the app's namespace may have no route to a nameserver.
 * So a lookup that needs DNS becomes one Resolve call on the ring: an INS
 * asks the nameservers configured on the isolator over its own netstack and
 * answers with the addresses (docs/protocol.md). Everything that needs no
 * network stays on libc, which answers it exactly as it always does:
 *
 *   numeric hosts      the real getaddrinfo with AI_NUMERICHOST decides
 *                      first; it also reports every argument error (flags,
 *                      family, service, socktype) exactly
 *   /etc/hosts         a name with an entry of the wanted family is handed
 *                      to the real function, which finds it in "files"
 *   localhost          and *.localhost (RFC 6761) are loopback, never DNS
 *   everything else    Resolve through the isolator
 *
 * Services, socket types and protocols of a DNS answer come from the real
 * getaddrinfo too: it resolves the service for a numeric placeholder host,
 * and each of its entries is repeated for every address the INS returned.
 * AI_ADDRCONFIG means "the INS has an uplink address of that family".
 * Result lists are allocated the way glibc allocates them (each node with
 * its address in one block, the canonical name apart), so glibc's
 * freeaddrinfo frees both kinds.
 *
 * When the isolator cannot be reached, MPSHIM_FAIL=open hands the lookup
 * to libc (the kernel's network); fail closed it is EAI_SYSTEM with errno
 * ENETUNREACH.
 */
#include "shim.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "mpproto.h"

/* ---- real functions ------------------------------------------------------- */

static struct {
	int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
	void (*freeaddrinfo)(struct addrinfo *);
	int (*getnameinfo)(const struct sockaddr *, socklen_t, char *, socklen_t, char *, socklen_t,
			   int);
	struct hostent *(*gethostbyname)(const char *);
	struct hostent *(*gethostbyname2)(const char *, int);
	int (*gethostbyname_r)(const char *, struct hostent *, char *, size_t, struct hostent **,
			       int *);
	int (*gethostbyname2_r)(const char *, int, struct hostent *, char *, size_t,
				struct hostent **, int *);
	struct hostent *(*gethostbyaddr)(const void *, socklen_t, int);
	int (*gethostbyaddr_r)(const void *, socklen_t, int, struct hostent *, char *, size_t,
			       struct hostent **, int *);
} R;

static pthread_once_t r_once = PTHREAD_ONCE_INIT;

static void r_init(void)
{
	MP_SAVE;
	mp_init();
#define SYM(n) R.n = (__typeof__(R.n))dlsym(RTLD_NEXT, #n)
	SYM(getaddrinfo);
	SYM(freeaddrinfo);
	SYM(getnameinfo);
	SYM(gethostbyname);
	SYM(gethostbyname2);
	SYM(gethostbyname_r);
	SYM(gethostbyname2_r);
	SYM(gethostbyaddr);
	SYM(gethostbyaddr_r);
#undef SYM
	MP_RESTORE;
}

#define INIT() pthread_once(&r_once, r_init)

/* ---- the Resolve call ----------------------------------------------------- */

struct answer {
	int status;        /* MP_RESOLVE_* */
	uint32_t families; /* MP_RESOLVE_HAS4 | MP_RESOLVE_HAS6 */
	char canon[MP_MAX_NAME + 1];
	int n;
	struct {
		int af;              /* AF_INET or AF_INET6 */
		unsigned char a[16]; /* IPv4 in the first 4 bytes */
		uint32_t scope;
	} addr[MP_MAX_RESOLVE_ADDRS];
};

/*
 * Asks the isolator. name (forward; NULL or "" asks only for the families)
 * or rev (reverse). 0 with *ans filled, or -errno: -MP_FAIL_ERRNO when the
 * isolator cannot be reached, -ENAMETOOLONG for a name beyond MP_MAX_NAME,
 * -EPROTO for a malformed reply.
 */
static int ins_resolve(const char *name, int family, const struct sockaddr *rev, socklen_t revlen,
		       struct answer *ans)
{
	unsigned char req[MP_HDR_SIZE + MP_RESOLVE_FIXED + MP_MAX_NAME];
	unsigned char rep[MP_HDR_SIZE + MP_RESOLVE_REPLY_FIXED + MP_MAX_NAME + MP_MAX_ADDR_LIST];
	unsigned char wire[MP_ADDR_SIZE];
	struct mp_resolve m;
	struct mp_resolve_reply r;
	const uint8_t *canon, *addrs;
	size_t nlen = name ? strlen(name) : 0, rlen = 0;
	int rc, len;

	if (nlen > MP_MAX_NAME)
		return -ENAMETOOLONG;
	memset(&m, 0, sizeof m);
	m.family = family == AF_INET ? MP_AF_INET : family == AF_INET6 ? MP_AF_INET6 : MP_AF_UNSPEC;
	if (rev) {
		m.flags = MP_RESOLVE_REVERSE;
		if ((rc = mps_addr_put(wire, rev, revlen)) < 0)
			return rc;
		mp_get_addr(wire, &m.addr);
		m.addr.port = 0;
		m.addr.flowinfo = 0;
	}
	m.name_len = (uint32_t)nlen;
	len = mp_enc_resolve(req, sizeof req, 0, 0, &m, name);
	if (len < 0)
		return -EINVAL;
	rc = mps_call(req, (size_t)len, MP_T_RESOLVE, rep, sizeof rep, &rlen);
	if (rc < 0)
		return rc;
	if (rc != MP_T_RESOLVE_REPLY ||
	    mp_dec_resolve_reply(rep + MP_HDR_SIZE, rlen - MP_HDR_SIZE, &r, &canon, &addrs) != MP_OK ||
	    r.addrs_len % MP_ADDR_SIZE)
		return -EPROTO;
	ans->status = r.status;
	ans->families = r.families;
	memcpy(ans->canon, canon, r.canon_len);
	ans->canon[r.canon_len] = 0;
	if (memchr(ans->canon, 0, r.canon_len))
		return -EPROTO;
	ans->n = 0;
	for (uint32_t off = 0; off < r.addrs_len; off += MP_ADDR_SIZE) {
		struct mp_addr a;

		mp_get_addr(addrs + off, &a);
		if (mp_addr_check(&a) != MP_OK || a.port || a.family == MP_AF_UNSPEC)
			return -EPROTO;
		ans->addr[ans->n].af = a.family == MP_AF_INET ? AF_INET : AF_INET6;
		memcpy(ans->addr[ans->n].a, a.addr, 16);
		ans->addr[ans->n].scope = a.scope_id;
		ans->n++;
	}
	return 0;
}

/* ---- what stays on libc --------------------------------------------------- */

#define FAM4 1
#define FAM6 2

/* Reads /etc/hosts: for a name, the families (FAM4|FAM6) of the entries
 * naming it; for an address (af, addr), 1 if an entry has it. */
static int hosts_scan(const char *name, int af, const void *addr)
{
	FILE *f = fopen("/etc/hosts", "re");
	char *line = NULL;
	size_t cap = 0;
	int found = 0;

	if (!f)
		return 0;
	while (getline(&line, &cap, f) > 0) {
		char *save = NULL, *tok, *hash = strchr(line, '#');
		unsigned char a[16];
		int fam;

		if (hash)
			*hash = 0;
		tok = strtok_r(line, " \t\r\n", &save);
		if (!tok)
			continue;
		if (inet_pton(AF_INET, tok, a) == 1)
			fam = AF_INET;
		else if (inet_pton(AF_INET6, tok, a) == 1)
			fam = AF_INET6;
		else
			continue;
		if (!name) {
			if (fam == af && !memcmp(a, addr, af == AF_INET ? 4 : 16)) {
				found = 1;
				break;
			}
			continue;
		}
		while ((tok = strtok_r(NULL, " \t\r\n", &save)))
			if (!strcasecmp(tok, name))
				found |= fam == AF_INET ? FAM4 : FAM6;
	}
	free(line);
	fclose(f);
	return found;
}

/* localhost and *.localhost, with or without the final dot (RFC 6761 6.3). */
static int is_localhost(const char *name)
{
	size_t n = strlen(name);

	if (n && name[n - 1] == '.')
		n--;
	if (n == 9 && !strncasecmp(name, "localhost", 9))
		return 1;
	return n > 10 && !strncasecmp(name + n - 10, ".localhost", 10);
}

static void loopback_answer(const char *name, struct answer *ans)
{
	memset(ans, 0, sizeof *ans);
	ans->status = MP_RESOLVE_OK;
	ans->families = MP_RESOLVE_HAS4 | MP_RESOLVE_HAS6;
	snprintf(ans->canon, sizeof ans->canon, "%s", name);
	ans->n = 2;
	ans->addr[0].af = AF_INET6;
	ans->addr[0].a[15] = 1;
	ans->addr[1].af = AF_INET;
	ans->addr[1].a[0] = 127;
	ans->addr[1].a[3] = 1;
}

/* The families the INS has, from a names-free Resolve; -errno when the
 * isolator cannot be reached. */
static int ins_families(void)
{
	struct answer ans;
	int rc = ins_resolve(NULL, AF_UNSPEC, NULL, 0, &ans);

	return rc < 0 ? rc : (int)ans.families;
}

/* The isolator is needed: 0 when it answers; otherwise 1 when the lookup
 * goes to libc (MPSHIM_FAIL=open, isolator absent), -1 with errno set (fail
 * closed, or refused by policy). */
static int need_isolator(void)
{
	int rc = mps_available();

	if (rc == 0)
		return 0;
	if (rc == -MP_REFUSED_ERRNO) {
		errno = MP_REFUSED_ERRNO; /* a refusal never goes to libc */
		return -1;
	}
	if (mp_conf.fail_open)
		return 1;
	errno = MP_FAIL_ERRNO;
	return -1;
}

static const char *status_name(int st)
{
	static const char *names[] = { "ok", "noname", "nodata", "again", "fail" };

	return st >= 0 && st <= (int)MP_RESOLVE_FAIL ? names[st] : "?";
}

/* ---- getaddrinfo ---------------------------------------------------------- */

static int eai_of(int status)
{
	switch (status) {
	case MP_RESOLVE_NONAME:
		return EAI_NONAME;
	case MP_RESOLVE_NODATA:
		return EAI_NODATA;
	case MP_RESOLVE_AGAIN:
		return EAI_AGAIN;
	}
	return EAI_FAIL;
}

/* Drops the entries of families the INS has no address of (AI_ADDRCONFIG),
 * loopback addresses excepted. Returns the remaining list's head. */
static struct addrinfo *addrconfig_filter(struct addrinfo *ai, int fams)
{
	struct addrinfo *head = ai, **link = &head;

	while ((ai = *link)) {
		int keep = 1;

		if (ai->ai_family == AF_INET) {
			const struct sockaddr_in *in = (const void *)ai->ai_addr;
			keep = (fams & MP_RESOLVE_HAS4) || (ntohl(in->sin_addr.s_addr) >> 24) == 127;
		} else if (ai->ai_family == AF_INET6) {
			const struct sockaddr_in6 *in6 = (const void *)ai->ai_addr;
			keep = (fams & MP_RESOLVE_HAS6) || IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
		}
		if (keep) {
			link = &ai->ai_next;
			continue;
		}
		*link = ai->ai_next;
		ai->ai_next = NULL;
		R.freeaddrinfo(ai);
	}
	return head;
}

/* Gives every entry the caller's flags, as glibc does (the real calls
 * here run with adjusted flags). */
static void set_flags(struct addrinfo *ai, int flags)
{
	for (; ai; ai = ai->ai_next)
		ai->ai_flags = flags;
}

/* A node laid out as glibc's: the socket address in the same block. */
static struct addrinfo *new_node(const struct addrinfo *tmpl, int flags, int af,
				 const unsigned char *a, uint32_t scope)
{
	size_t salen = af == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
	struct addrinfo *ai = calloc(1, sizeof *ai + salen);
	uint16_t port;

	if (!ai)
		return NULL;
	port = tmpl->ai_family == AF_INET ? ((const struct sockaddr_in *)(const void *)tmpl->ai_addr)->sin_port
					  : ((const struct sockaddr_in6 *)(const void *)tmpl->ai_addr)->sin6_port;
	ai->ai_flags = flags;
	ai->ai_family = af;
	ai->ai_socktype = tmpl->ai_socktype;
	ai->ai_protocol = tmpl->ai_protocol;
	ai->ai_addrlen = (socklen_t)salen;
	ai->ai_addr = (struct sockaddr *)(ai + 1);
	if (af == AF_INET) {
		struct sockaddr_in *in = (void *)ai->ai_addr;
		in->sin_family = AF_INET;
		in->sin_port = port;
		memcpy(&in->sin_addr, a, 4);
	} else {
		struct sockaddr_in6 *in6 = (void *)ai->ai_addr;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = port;
		in6->sin6_scope_id = scope;
		memcpy(&in6->sin6_addr, a, 16);
	}
	return ai;
}

/* Builds the result list: every address (after the family rules) times
 * every entry of tmpl. Returns 0 or an EAI_* code. */
static int build_list(const struct answer *ans, const struct addrinfo *h, const struct addrinfo *tmpl,
		      const char *node, struct addrinfo **res)
{
	struct addrinfo *head = NULL, **tail = &head;
	int fams = (int)ans->families, have6 = 0, n = 0;
	struct {
		int af;
		unsigned char a[16];
		uint32_t scope;
	} out[MP_MAX_RESOLVE_ADDRS];

	for (int i = 0; i < ans->n; i++)
		have6 |= ans->addr[i].af == AF_INET6;
	/* In the INS's order (RFC 6724, IPv4 ranked as IPv4-mapped), so a
	 * mapped address keeps its place as with glibc's sort. */
	for (int i = 0; i < ans->n; i++) {
		int af = ans->addr[i].af;

		if (h->ai_family == AF_INET6 && af == AF_INET) {
			if (!(h->ai_flags & AI_V4MAPPED) || (have6 && !(h->ai_flags & AI_ALL)))
				continue;
			/* ::ffff:a.b.c.d */
			memset(out[n].a, 0, 16);
			out[n].a[10] = out[n].a[11] = 0xff;
			memcpy(out[n].a + 12, ans->addr[i].a, 4);
			out[n].af = AF_INET6;
			out[n++].scope = 0;
			continue;
		}
		if (h->ai_family != AF_UNSPEC && h->ai_family != af)
			continue;
		if (h->ai_family == AF_UNSPEC && (h->ai_flags & AI_ADDRCONFIG) &&
		    !(fams & (af == AF_INET ? MP_RESOLVE_HAS4 : MP_RESOLVE_HAS6)))
			continue;
		out[n].af = af;
		memcpy(out[n].a, ans->addr[i].a, 16);
		out[n++].scope = ans->addr[i].scope;
	}
	if (n == 0)
		return EAI_NODATA;
	for (int i = 0; i < n; i++) {
		for (const struct addrinfo *t = tmpl; t; t = t->ai_next) {
			struct addrinfo *ai = new_node(t, h->ai_flags, out[i].af, out[i].a, out[i].scope);

			if (!ai) {
				R.freeaddrinfo(head);
				return EAI_MEMORY;
			}
			*tail = ai;
			tail = &ai->ai_next;
		}
	}
	if (h->ai_flags & AI_CANONNAME) {
		head->ai_canonname = strdup(ans->canon[0] ? ans->canon : node);
		if (!head->ai_canonname) {
			R.freeaddrinfo(head);
			return EAI_MEMORY;
		}
	}
	*res = head;
	return 0;
}

MP_EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			  struct addrinfo **res)
{
	struct addrinfo h, hn, hs, *tmpl = NULL;
	struct answer ans;
	int rc, hf, want, qfam;

	INIT();
	if (!node)
		return R.getaddrinfo(node, service, hints, res);
	if (hints) {
		h = *hints;
	} else {
		/* glibc's default hints. */
		memset(&h, 0, sizeof h);
		h.ai_family = AF_UNSPEC;
		h.ai_flags = AI_V4MAPPED | AI_ADDRCONFIG;
	}

	/* Numeric hosts, and every argument error, as glibc says. */
	hn = h;
	hn.ai_flags = (h.ai_flags & ~AI_ADDRCONFIG) | AI_NUMERICHOST;
	rc = R.getaddrinfo(node, service, &hn, res);
	if (rc != EAI_NONAME || (h.ai_flags & AI_NUMERICHOST)) {
		if (rc == 0)
			set_flags(*res, h.ai_flags);
		if (rc == 0 && (h.ai_flags & AI_ADDRCONFIG)) {
			int fams = ins_families();

			if (fams >= 0) {
				*res = addrconfig_filter(*res, fams);
				if (!*res)
					rc = EAI_NONAME;
			}
		}
		MPLOG("getaddrinfo(%s, %s) = %d [numeric]", node, service ? service : "-", rc);
		return rc;
	}

	/* The service part: glibc's entries for a numeric placeholder. */
	hs = h;
	hs.ai_flags = (h.ai_flags & ~(AI_ADDRCONFIG | AI_CANONNAME | AI_V4MAPPED | AI_ALL)) |
		      AI_NUMERICHOST;
	if (hs.ai_family == AF_UNSPEC)
		hs.ai_family = AF_INET;
	rc = R.getaddrinfo(hs.ai_family == AF_INET6 ? "::" : "0.0.0.0", service, &hs, &tmpl);
	if (rc != 0) {
		MPLOG("getaddrinfo(%s, %s) = %d [service]", node, service ? service : "-", rc);
		return rc;
	}

	/* /etc/hosts: a name with an entry of the wanted family. */
	hf = hosts_scan(node, 0, NULL);
	want = h.ai_family == AF_INET ? FAM4
	       : h.ai_family == AF_INET6 ? FAM6 | ((h.ai_flags & AI_V4MAPPED) ? FAM4 : 0)
					 : FAM4 | FAM6;
	if (hf & want) {
		R.freeaddrinfo(tmpl);
		hn = h;
		hn.ai_flags &= ~AI_ADDRCONFIG;
		rc = R.getaddrinfo(node, service, &hn, res);
		if (rc == 0)
			set_flags(*res, h.ai_flags);
		MPLOG("getaddrinfo(%s, %s) = %d [hosts]", node, service ? service : "-", rc);
		return rc;
	}

	if (!*node) {
		R.freeaddrinfo(tmpl);
		return EAI_NONAME;
	}
	if (is_localhost(node)) {
		loopback_answer(node, &ans);
	} else {
		switch (need_isolator()) {
		case 1:
			R.freeaddrinfo(tmpl);
			return R.getaddrinfo(node, service, hints, res);
		case -1:
			R.freeaddrinfo(tmpl);
			MPLOG("getaddrinfo(%s) = EAI_SYSTEM %s", node, mp_errname(errno));
			return EAI_SYSTEM;
		}
		qfam = h.ai_family;
		if (qfam == AF_INET6 && (h.ai_flags & AI_V4MAPPED))
			qfam = AF_UNSPEC;
		rc = ins_resolve(node, qfam, NULL, 0, &ans);
		if (rc == -ENAMETOOLONG) {
			R.freeaddrinfo(tmpl);
			return EAI_NONAME;
		}
		if (rc < 0) {
			R.freeaddrinfo(tmpl);
			errno = -rc;
			MPLOG("getaddrinfo(%s) = EAI_SYSTEM %s", node, mp_errname(-rc));
			return EAI_SYSTEM;
		}
		if ((h.ai_flags & AI_ADDRCONFIG) &&
		    ((h.ai_family == AF_INET && !(ans.families & MP_RESOLVE_HAS4)) ||
		     (h.ai_family == AF_INET6 && !(ans.families & MP_RESOLVE_HAS6)))) {
			/* glibc: no interface of the family, no answer. */
			R.freeaddrinfo(tmpl);
			return EAI_NONAME;
		}
		if (ans.status != MP_RESOLVE_OK) {
			R.freeaddrinfo(tmpl);
			MPLOG("getaddrinfo(%s) = %s [ins]", node, status_name(ans.status));
			return eai_of(ans.status);
		}
	}
	rc = build_list(&ans, &h, tmpl, node, res);
	R.freeaddrinfo(tmpl);
	MPLOG("getaddrinfo(%s, %s) = %d, %d addresses [ins]", node, service ? service : "-", rc, ans.n);
	return rc;
}

/* ---- gethostbyname family ------------------------------------------------- */

/* Is name a numeric address libc converts without a lookup? */
static int numeric_host(const char *name, int af)
{
	unsigned char a[16];
	struct in_addr in;

	if (af == AF_INET)
		return inet_aton(name, &in) != 0;
	return inet_pton(AF_INET6, name, a) == 1 || inet_aton(name, &in) != 0;
}

/* Fills ret in buf: h_name, one alias (the asked name when it differs),
 * the addresses of family af. ERANGE when buf is too small. */
static int fill_hostent(struct hostent *ret, char *buf, size_t buflen, const char *hname,
			const char *alias, int af, const unsigned char (*addrs)[16], int n)
{
	size_t alen = af == AF_INET ? 4 : 16, need, nl = strlen(hname) + 1, al = alias ? strlen(alias) + 1 : 0;
	uintptr_t start = (uintptr_t)buf, p = (start + sizeof(char *) - 1) & ~(uintptr_t)(sizeof(char *) - 1);
	char **list, **aliases, *data;

	need = (p - start) + (size_t)(n + 1 + 2) * sizeof(char *) + (size_t)n * alen + nl + al;
	if (need > buflen)
		return ERANGE;
	list = (char **)p;
	aliases = list + n + 1;
	data = (char *)(aliases + 2);
	for (int i = 0; i < n; i++) {
		memcpy(data, addrs[i], alen);
		list[i] = data;
		data += alen;
	}
	list[n] = NULL;
	memcpy(data, hname, nl);
	ret->h_name = data;
	data += nl;
	aliases[0] = aliases[1] = NULL;
	if (alias) {
		memcpy(data, alias, al);
		aliases[0] = data;
	}
	ret->h_aliases = aliases;
	ret->h_addrtype = af;
	ret->h_length = (int)alen;
	ret->h_addr_list = list;
	return 0;
}

static int herr_of(int status)
{
	switch (status) {
	case MP_RESOLVE_NONAME:
		return HOST_NOT_FOUND;
	case MP_RESOLVE_NODATA:
		return NO_DATA;
	case MP_RESOLVE_AGAIN:
		return TRY_AGAIN;
	}
	return NO_RECOVERY;
}

/*
 * The reentrant lookup through the isolator, with glibc's conventions:
 * 0 and *result set on success; 0 and *result NULL when the name is not
 * found (*h_errnop HOST_NOT_FOUND, NO_DATA or NO_RECOVERY); EAGAIN for
 * TRY_AGAIN; ERANGE (h_errno NETDB_INTERNAL) when buf is too small; an
 * errno with NETDB_INTERNAL when the isolator cannot be reached.
 * 1: the lookup belongs to libc.
 */
static int ins_byname(const char *name, int af, struct hostent *ret, char *buf, size_t buflen,
		      struct hostent **result, int *h_errnop)
{
	unsigned char addrs[MP_MAX_RESOLVE_ADDRS][16];
	struct answer ans;
	const char *hname;
	int rc, n = 0;

	*result = NULL;
	if (!name || (af != AF_INET && af != AF_INET6) || numeric_host(name, af) ||
	    (hosts_scan(name, 0, NULL) & (af == AF_INET ? FAM4 : FAM6)))
		return 1;
	if (!*name) {
		*h_errnop = HOST_NOT_FOUND;
		return 0;
	}
	if (is_localhost(name)) {
		loopback_answer(name, &ans);
	} else {
		switch (need_isolator()) {
		case 1:
			return 1;
		case -1:
			*h_errnop = NETDB_INTERNAL;
			return errno;
		}
		rc = ins_resolve(name, af, NULL, 0, &ans);
		if (rc == -ENAMETOOLONG) {
			*h_errnop = HOST_NOT_FOUND;
			return 0;
		}
		if (rc < 0) {
			*h_errnop = NETDB_INTERNAL;
			errno = -rc;
			return -rc;
		}
	}
	MPLOG("gethostbyname2(%s, %d) = %s, %d addresses [ins]", name, af, status_name(ans.status), ans.n);
	if (ans.status != MP_RESOLVE_OK) {
		*h_errnop = herr_of(ans.status);
		return ans.status == MP_RESOLVE_AGAIN ? EAGAIN : 0;
	}
	for (int i = 0; i < ans.n; i++)
		if (ans.addr[i].af == af)
			memcpy(addrs[n++], ans.addr[i].a, 16);
	if (n == 0) {
		*h_errnop = NO_DATA;
		return 0;
	}
	hname = ans.canon[0] ? ans.canon : name;
	rc = fill_hostent(ret, buf, buflen, hname, strcasecmp(hname, name) ? name : NULL, af,
			  (const unsigned char(*)[16])addrs, n);
	if (rc) {
		*h_errnop = NETDB_INTERNAL;
		errno = rc;
		return rc;
	}
	*h_errnop = NETDB_SUCCESS;
	*result = ret;
	return 0;
}

/* Storage of the non-reentrant functions, shared like glibc's. */
static pthread_mutex_t hb_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hostent hb_ent;
static char hb_buf[4096 + 64 * MP_MAX_RESOLVE_ADDRS];

/* gethostbyname/gethostbyname2 through the isolator; *handled is 0 when
 * the lookup belongs to libc. */
static struct hostent *ins_byname_static(const char *name, int af, int *handled)
{
	struct hostent *res = NULL;
	int herr = 0, rc;

	pthread_mutex_lock(&hb_mu);
	rc = ins_byname(name, af, &hb_ent, hb_buf, sizeof hb_buf, &res, &herr);
	pthread_mutex_unlock(&hb_mu);
	*handled = rc != 1;
	if (rc == 1)
		return NULL;
	h_errno = herr;
	if (rc)
		errno = rc;
	return res;
}

MP_EXPORT struct hostent *gethostbyname(const char *name)
{
	int handled;
	struct hostent *h;

	INIT();
	h = ins_byname_static(name, AF_INET, &handled);
	return handled ? h : R.gethostbyname(name);
}

MP_EXPORT struct hostent *gethostbyname2(const char *name, int af)
{
	int handled;
	struct hostent *h;

	INIT();
	h = ins_byname_static(name, af, &handled);
	return handled ? h : R.gethostbyname2(name, af);
}

MP_EXPORT int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen,
			      struct hostent **result, int *h_errnop)
{
	int rc;

	INIT();
	rc = ins_byname(name, AF_INET, ret, buf, buflen, result, h_errnop);
	return rc == 1 ? R.gethostbyname_r(name, ret, buf, buflen, result, h_errnop) : rc;
}

MP_EXPORT int gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf,
			       size_t buflen, struct hostent **result, int *h_errnop)
{
	int rc;

	INIT();
	rc = ins_byname(name, af, ret, buf, buflen, result, h_errnop);
	return rc == 1 ? R.gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop) : rc;
}

/* ---- reverse lookups ------------------------------------------------------ */

/* Does a reverse lookup of (af, addr) belong to libc: loopback,
 * unspecified, link-local (scoped) or an /etc/hosts address? */
static int reverse_local(int af, const unsigned char *addr)
{
	if (af == AF_INET) {
		if (addr[0] == 127 || !memcmp(addr, "\0\0\0\0", 4))
			return 1;
	} else {
		const struct in6_addr *a = (const void *)addr;
		if (IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_LINKLOCAL(a) ||
		    (IN6_IS_ADDR_V4MAPPED(a) && addr[12] == 127))
			return 1;
	}
	return hosts_scan(NULL, af, addr);
}

/* Looks up the host name of (af, addr) through the isolator. 0 with the
 * answer, 1 when it belongs to libc, -1 with errno set (fail closed). */
static int ins_byaddr(int af, const unsigned char *addr, struct answer *ans)
{
	union {
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} u;
	int rc;

	if (reverse_local(af, addr))
		return 1;
	switch (need_isolator()) {
	case 1:
		return 1;
	case -1:
		return -1;
	}
	memset(&u, 0, sizeof u);
	if (af == AF_INET) {
		u.in.sin_family = AF_INET;
		memcpy(&u.in.sin_addr, addr, 4);
	} else {
		u.in6.sin6_family = AF_INET6;
		memcpy(&u.in6.sin6_addr, addr, 16);
	}
	rc = ins_resolve(NULL, af, (const struct sockaddr *)&u,
			 af == AF_INET ? sizeof u.in : sizeof u.in6, ans);
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	MPLOG("reverse lookup = %s %s [ins]", status_name(ans->status), ans->canon);
	if (ans->status == MP_RESOLVE_OK && !ans->canon[0])
		ans->status = MP_RESOLVE_NODATA;
	return 0;
}

/* The domain of this host (after the first dot of its name), for
 * NI_NOFQDN; "" when it has none. */
static void own_domain(char *buf, size_t len)
{
	char host[256];
	const char *dot;

	buf[0] = 0;
	if (gethostname(host, sizeof host - 1) < 0)
		return;
	host[sizeof host - 1] = 0;
	if ((dot = strchr(host, '.')))
		snprintf(buf, len, "%s", dot + 1);
}

MP_EXPORT int getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host, socklen_t hostlen,
			  char *serv, socklen_t servlen, int flags)
{
	const unsigned char *addr;
	struct answer ans;
	char name[MP_MAX_NAME + 1];
	int af, rc;

	INIT();
	if (!host || !hostlen || (flags & NI_NUMERICHOST) || !sa || salen < sizeof(sa_family_t))
		return R.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
	af = sa->sa_family;
	if (af == AF_INET && salen >= sizeof(struct sockaddr_in))
		addr = (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
	else if (af == AF_INET6 && salen >= sizeof(struct sockaddr_in6))
		addr = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
	else
		return R.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
	/* Bad flags, a bad address length and the service: glibc's answer
	 * first (the numeric host it writes is replaced below). */
	rc = R.getnameinfo(sa, salen, name, sizeof name, serv, servlen,
			   (flags & ~NI_NAMEREQD) | NI_NUMERICHOST);
	if (rc)
		return rc;
	switch (ins_byaddr(af, addr, &ans)) {
	case 1:
		return R.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
	case -1:
		return EAI_SYSTEM;
	}
	if (ans.status != MP_RESOLVE_OK) {
		if (flags & NI_NAMEREQD)
			return ans.status == MP_RESOLVE_AGAIN ? EAI_AGAIN : EAI_NONAME;
		return R.getnameinfo(sa, salen, host, hostlen, NULL, 0, flags | NI_NUMERICHOST);
	}
	snprintf(name, sizeof name, "%s", ans.canon);
	if (flags & NI_NOFQDN) {
		char dom[256];
		char *dot = strchr(name, '.');

		own_domain(dom, sizeof dom);
		if (dot && dom[0] && !strcasecmp(dot + 1, dom))
			*dot = 0;
	}
	if (strlen(name) >= hostlen)
		return EAI_OVERFLOW;
	strcpy(host, name);
	return 0;
}

/* gethostbyaddr_r through the isolator; 1 when it belongs to libc. */
static int ins_byaddr_r(const void *addr, socklen_t len, int type, struct hostent *ret, char *buf,
			size_t buflen, struct hostent **result, int *h_errnop)
{
	unsigned char a[1][16];
	struct answer ans;
	int rc;

	*result = NULL;
	if (!addr || !((type == AF_INET && len == 4) || (type == AF_INET6 && len == 16)))
		return 1;
	switch (ins_byaddr(type, addr, &ans)) {
	case 1:
		return 1;
	case -1:
		*h_errnop = NETDB_INTERNAL;
		return errno;
	}
	if (ans.status != MP_RESOLVE_OK) {
		*h_errnop = herr_of(ans.status);
		return ans.status == MP_RESOLVE_AGAIN ? EAGAIN : 0;
	}
	memset(a, 0, sizeof a);
	memcpy(a[0], addr, len);
	rc = fill_hostent(ret, buf, buflen, ans.canon, NULL, type, (const unsigned char(*)[16])a, 1);
	if (rc) {
		*h_errnop = NETDB_INTERNAL;
		errno = rc;
		return rc;
	}
	*h_errnop = NETDB_SUCCESS;
	*result = ret;
	return 0;
}

MP_EXPORT int gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *ret,
			      char *buf, size_t buflen, struct hostent **result, int *h_errnop)
{
	int rc;

	INIT();
	rc = ins_byaddr_r(addr, len, type, ret, buf, buflen, result, h_errnop);
	return rc == 1 ? R.gethostbyaddr_r(addr, len, type, ret, buf, buflen, result, h_errnop) : rc;
}

MP_EXPORT struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type)
{
	struct hostent *res = NULL;
	int herr = 0, rc;

	INIT();
	pthread_mutex_lock(&hb_mu);
	rc = ins_byaddr_r(addr, len, type, &hb_ent, hb_buf, sizeof hb_buf, &res, &herr);
	pthread_mutex_unlock(&hb_mu);
	if (rc == 1)
		return R.gethostbyaddr(addr, len, type);
	h_errno = herr;
	if (rc)
		errno = rc;
	return res;
}
