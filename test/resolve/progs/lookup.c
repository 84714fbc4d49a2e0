/*
 * lookup: runs name lookups given on the command line and prints what
 * libc's interface returns: "CASE: result", then one indented line per
 * address of a getaddrinfo list, so that runs can be compared as text
 * (under the shim and with glibc's own resolver).
 *
 *   ai NAME SERVICE FAMILY SOCKTYPE FLAGS   getaddrinfo
 *   hb NAME                                 gethostbyname
 *   hb2 NAME FAMILY                         gethostbyname2
 *   hbr NAME FAMILY BUFLEN                  gethostbyname2_r with a BUFLEN buffer
 *   ni ADDR PORT FLAGS HOSTLEN              getnameinfo
 *   ha ADDR                                 gethostbyaddr
 *
 * "-" is NULL (NAME, SERVICE) or no flags. FAMILY: unspec, inet, inet6.
 * SOCKTYPE: 0, stream, dgram, raw. FLAGS (comma separated): ai: canon,
 * numerichost, numericserv, passive, v4mapped, all, addrconfig; ni:
 * numerichost, numericserv, namereqd, nofqdn, dgram; 0xN adds raw bits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char *eai(int rc)
{
	switch (rc) {
	case 0: return "OK";
	case EAI_AGAIN: return "EAI_AGAIN";
	case EAI_BADFLAGS: return "EAI_BADFLAGS";
	case EAI_FAIL: return "EAI_FAIL";
	case EAI_FAMILY: return "EAI_FAMILY";
	case EAI_MEMORY: return "EAI_MEMORY";
	case EAI_NODATA: return "EAI_NODATA";
	case EAI_NONAME: return "EAI_NONAME";
	case EAI_SERVICE: return "EAI_SERVICE";
	case EAI_SOCKTYPE: return "EAI_SOCKTYPE";
	case EAI_SYSTEM: return "EAI_SYSTEM";
	case EAI_OVERFLOW: return "EAI_OVERFLOW";
	case EAI_ADDRFAMILY: return "EAI_ADDRFAMILY";
	}
	return "EAI_?";
}

static const char *herr(int h)
{
	switch (h) {
	case 0: return "NETDB_SUCCESS";
	case HOST_NOT_FOUND: return "HOST_NOT_FOUND";
	case TRY_AGAIN: return "TRY_AGAIN";
	case NO_RECOVERY: return "NO_RECOVERY";
	case NO_DATA: return "NO_DATA";
	case NETDB_INTERNAL: return "NETDB_INTERNAL";
	}
	return "H_?";
}

static const char *errname(int e)
{
	switch (e) {
	case 0: return "0";
	case ERANGE: return "ERANGE";
	case EAGAIN: return "EAGAIN";
	case ENETUNREACH: return "ENETUNREACH";
	case ENOENT: return "ENOENT";
	}
	return "E?";
}

static int family(const char *s)
{
	if (!strcmp(s, "inet"))
		return AF_INET;
	if (!strcmp(s, "inet6"))
		return AF_INET6;
	return AF_UNSPEC;
}

static const char *famname(int f)
{
	return f == AF_INET ? "inet" : f == AF_INET6 ? "inet6" : "unspec";
}

static int socktype(const char *s)
{
	if (!strcmp(s, "stream"))
		return SOCK_STREAM;
	if (!strcmp(s, "dgram"))
		return SOCK_DGRAM;
	if (!strcmp(s, "raw"))
		return SOCK_RAW;
	return 0;
}

static const char *typename(int t)
{
	return t == SOCK_STREAM ? "stream" : t == SOCK_DGRAM ? "dgram" : t == SOCK_RAW ? "raw" : "0";
}

static int flags(const char *s, int ni)
{
	static const struct {
		const char *n;
		int ai, ni;
	} tab[] = {
		{ "canon", AI_CANONNAME, 0 },
		{ "numerichost", AI_NUMERICHOST, NI_NUMERICHOST },
		{ "numericserv", AI_NUMERICSERV, NI_NUMERICSERV },
		{ "passive", AI_PASSIVE, 0 },
		{ "v4mapped", AI_V4MAPPED, 0 },
		{ "all", AI_ALL, 0 },
		{ "addrconfig", AI_ADDRCONFIG, 0 },
		{ "namereqd", 0, NI_NAMEREQD },
		{ "nofqdn", 0, NI_NOFQDN },
		{ "dgram", 0, NI_DGRAM },
	};
	char buf[256], *save = NULL, *tok;
	int f = 0;

	if (!strcmp(s, "-"))
		return 0;
	snprintf(buf, sizeof buf, "%s", s);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!strncmp(tok, "0x", 2))
			f |= (int)strtol(tok, NULL, 16);
		for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
			if (!strcmp(tok, tab[i].n))
				f |= ni ? tab[i].ni : tab[i].ai;
	}
	return f;
}

static const char *nul(const char *s)
{
	return strcmp(s, "-") ? s : NULL;
}

static void print_sa(const struct sockaddr *sa)
{
	char a[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;
		printf("%s port %d", inet_ntop(AF_INET, &in->sin_addr, a, sizeof a), ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		printf("%s port %d scope %u", inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof a),
		       ntohs(in6->sin6_port), in6->sin6_scope_id);
	} else {
		printf("family %d", sa->sa_family);
	}
}

static void do_ai(char **a)
{
	struct addrinfo h, *res = NULL;
	int rc;

	memset(&h, 0, sizeof h);
	h.ai_family = family(a[2]);
	h.ai_socktype = socktype(a[3]);
	h.ai_flags = flags(a[4], 0);
	rc = getaddrinfo(nul(a[0]), nul(a[1]), &h, &res);
	printf("%s%s%s\n", eai(rc), rc == EAI_SYSTEM ? " " : "", rc == EAI_SYSTEM ? errname(errno) : "");
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		printf("  %s %s proto %d flags %#x ", famname(ai->ai_family), typename(ai->ai_socktype),
		       ai->ai_protocol, ai->ai_flags);
		print_sa(ai->ai_addr);
		if (ai->ai_canonname)
			printf(" canon %s", ai->ai_canonname);
		printf("\n");
	}
	if (res)
		freeaddrinfo(res);
}

static void print_hostent(const struct hostent *he)
{
	char a[INET6_ADDRSTRLEN];

	printf("name %s type %s len %d aliases [", he->h_name, famname(he->h_addrtype), he->h_length);
	for (char **p = he->h_aliases; *p; p++)
		printf("%s%s", p == he->h_aliases ? "" : " ", *p);
	printf("] addrs [");
	for (char **p = he->h_addr_list; *p; p++)
		printf("%s%s", p == he->h_addr_list ? "" : " ", inet_ntop(he->h_addrtype, *p, a, sizeof a));
	printf("]\n");
}

static void do_hb(struct hostent *he)
{
	if (!he)
		printf("NULL %s\n", herr(h_errno));
	else
		print_hostent(he);
}

static void do_hbr(char **a)
{
	struct hostent ret, *res = NULL;
	size_t len = (size_t)atoi(a[2]);
	char *buf = malloc(len ? len : 1);
	int herrno = -1, rc;

	rc = gethostbyname2_r(a[0], family(a[1]), &ret, buf, len, &res, &herrno);
	printf("rc %s h_errno %s ", errname(rc), herr(herrno));
	if (res)
		print_hostent(res);
	else
		printf("NULL\n");
	free(buf);
}

static void do_ni(char **a)
{
	union {
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} u;
	socklen_t len;
	char host[1025], serv[64];
	int rc, hostlen = atoi(a[3]);

	memset(&u, 0, sizeof u);
	if (inet_pton(AF_INET, a[0], &u.in.sin_addr) == 1) {
		u.in.sin_family = AF_INET;
		u.in.sin_port = htons((uint16_t)atoi(a[1]));
		len = sizeof u.in;
	} else {
		inet_pton(AF_INET6, a[0], &u.in6.sin6_addr);
		u.in6.sin6_family = AF_INET6;
		u.in6.sin6_port = htons((uint16_t)atoi(a[1]));
		len = sizeof u.in6;
	}
	if (hostlen > (int)sizeof host)
		hostlen = sizeof host;
	rc = getnameinfo((struct sockaddr *)&u, len, host, (socklen_t)hostlen, serv, sizeof serv,
			 flags(a[2], 1));
	printf("%s", eai(rc));
	if (!rc)
		printf(" host %s serv %s", host, serv);
	printf("\n");
}

static void do_ha(const char *s)
{
	unsigned char a[16];
	int af = inet_pton(AF_INET, s, a) == 1 ? AF_INET : AF_INET6;

	if (af == AF_INET6)
		inet_pton(AF_INET6, s, a);
	do_hb(gethostbyaddr(a, af == AF_INET ? 4 : 16, af));
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		char *w[6] = { 0 }, buf[1024], *save = NULL;
		int n = 0;

		snprintf(buf, sizeof buf, "%s", argv[i]);
		printf("%s: ", argv[i]);
		for (char *t = strtok_r(buf, " ", &save); t && n < 6; t = strtok_r(NULL, " ", &save))
			w[n++] = t;
		if (n == 6 && !strcmp(w[0], "ai"))
			do_ai(w + 1);
		else if (n == 2 && !strcmp(w[0], "hb"))
			do_hb(gethostbyname(w[1]));
		else if (n == 3 && !strcmp(w[0], "hb2"))
			do_hb(gethostbyname2(w[1], family(w[2])));
		else if (n == 4 && !strcmp(w[0], "hbr"))
			do_hbr(w + 1);
		else if (n == 5 && !strcmp(w[0], "ni"))
			do_ni(w + 1);
		else if (n == 2 && !strcmp(w[0], "ha"))
			do_ha(w[1]);
		else {
			fprintf(stderr, "lookup: bad case %s\n", argv[i]);
			return 2;
		}
		fflush(stdout);
	}
	return 0;
}
