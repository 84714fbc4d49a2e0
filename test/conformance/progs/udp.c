/* UDP: sendto/recvfrom, MSG_TRUNC both ways, MSG_PEEK, FIONREAD, source
 * addresses, connected send/recv, sendmmsg/recvmmsg, EAGAIN. */
#include "common.h"

static void wait_in(int s)
{
	struct pollfd p = { s, POLLIN, 0 };
	poll(&p, 1, 5000);
}

int main(int argc, char **argv)
{
	init(argc, argv);
	for (int fam = AF_INET; fam; fam = fam == AF_INET ? AF_INET6 : 0) {
		union addr a, from;
		socklen_t l = mkaddr(&a, fam, peer_ip(fam), PORT_UDP), fl;
		int s = sock(fam, SOCK_DGRAM), n = -1;
		char buf[32], b[80];
		struct iovec iov = { buf, 4 };
		struct msghdr mh = { .msg_name = &from, .msg_namelen = sizeof from,
				     .msg_iov = &iov, .msg_iovlen = 1 };

		say("family %s", fam == AF_INET ? "inet" : "inet6");
		res("recv empty MSG_DONTWAIT", recv(s, buf, sizeof buf, MSG_DONTWAIT));
		res("sendto", sendto(s, "0123456789", 10, 0, &a.sa, l));
		wait_in(s);
		ioctl(s, FIONREAD, &n);
		say("FIONREAD: %d", n);
		fl = sizeof from;
		ssize_t r = recvfrom(s, buf, 4, MSG_PEEK, &from.sa, &fl);
		say("recvfrom MSG_PEEK 4: %zd", r);
		say("from: %s len=%u", fmt(&from, fl, b, sizeof b), fl);
		r = recvmsg(s, &mh, 0);
		say("recvmsg 4: %zd trunc=%d", r, !!(mh.msg_flags & MSG_TRUNC));
		res("sendto", sendto(s, "abcdefgh", 8, 0, &a.sa, l));
		wait_in(s);
		say("recv MSG_TRUNC 2: %zd", recv(s, buf, 2, MSG_TRUNC));
		res("sendto empty", sendto(s, "", 0, 0, &a.sa, l));
		wait_in(s);
		say("recv empty datagram: %zd", recv(s, buf, sizeof buf, 0));
		res("connect", connect(s, &a.sa, l));
		fl = sizeof from;
		getpeername(s, &from.sa, &fl);
		say("peer: %s", fmt(&from, fl, b, sizeof b));
		res("send", send(s, "abc", 3, 0));
		wait_in(s);
		memset(buf, 0, sizeof buf);
		r = recv(s, buf, sizeof buf, 0);
		say("recv: %zd %.3s", r, buf);
		struct mmsghdr mm[2];
		struct iovec v[2] = { { "one", 3 }, { "two!", 4 } };
		char r1[8] = { 0 }, r2[8] = { 0 };
		memset(mm, 0, sizeof mm);
		mm[0].msg_hdr.msg_iov = &v[0];
		mm[0].msg_hdr.msg_iovlen = 1;
		mm[1].msg_hdr.msg_iov = &v[1];
		mm[1].msg_hdr.msg_iovlen = 1;
		say("sendmmsg: %d", sendmmsg(s, mm, 2, 0));
		usleep(100000);
		struct iovec rv[2] = { { r1, sizeof r1 }, { r2, sizeof r2 } };
		memset(mm, 0, sizeof mm);
		mm[0].msg_hdr.msg_iov = &rv[0];
		mm[0].msg_hdr.msg_iovlen = 1;
		mm[1].msg_hdr.msg_iov = &rv[1];
		mm[1].msg_hdr.msg_iovlen = 1;
		int got = recvmmsg(s, mm, 2, MSG_WAITFORONE, NULL);
		say("recvmmsg: %d [%u %s] [%u %s]", got, mm[0].msg_len, r1, mm[1].msg_len, r2);
		close(s);
	}
	return 0;
}
