package isolator

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/msgproto"
)

// TestSplitCall checks what the daemon answers for a socket carried by the
// split tunnel, in each state, as the kernel would for a TCP socket.
func TestSplitCall(t *testing.T) {
	s := NewAppServer(AppConfig{}, nil, nil)
	s.SetSplit([]netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("10.20.5.0/24")}, "/nonexistent")
	if !s.split.covers(netip.MustParseAddr("::ffff:10.20.0.5")) || s.split.covers(netip.MustParseAddr("10.21.0.5")) {
		t.Fatal("covers")
	}
	if s.split.prefixes[0].Bits() != 24 {
		t.Fatal("prefixes are not longest first")
	}
	c := &client{group: 7, log: s.log}
	other := &client{group: 8, log: s.log}
	dst := netip.MustParseAddrPort("10.20.0.5:8080")
	id := SockID(SplitINS, 1)
	s.splitSocks[id] = &splitSock{group: 7, domain: unix.AF_INET, dst: dst, opts: map[[2]int32][]byte{}}
	set := func(state int, soErr unix.Errno) {
		s.splitSocks[id].state, s.splitSocks[id].soErr = state, soErr
	}
	errnoOf := func(r msgproto.Message, e unix.Errno) unix.Errno {
		if e != 0 {
			return e
		}
		if rr, ok := r.(*msgproto.Reply); ok {
			return unix.Errno(rr.Errno)
		}
		return 0
	}
	intOpt := func(name int32) *msgproto.Getsockopt {
		return &msgproto.Getsockopt{Sock: id, Level: unix.SOL_SOCKET, Name: name, MaxLen: 4}
	}
	for _, tc := range []struct {
		name    string
		state   int
		soErr   unix.Errno
		c       *client
		m       msgproto.Message
		errno   unix.Errno
		value   int32  // OptReply as an int
		addr    string // AddrReply
		soAfter unix.Errno
	}{
		{"connect while connecting", splitConnecting, 0, c, &msgproto.Connect{Sock: id}, unix.EALREADY, 0, "", 0},
		{"connect when connected", splitConnected, 0, c, &msgproto.Connect{Sock: id}, unix.EISCONN, 0, "", 0},
		{"connect after failure", splitFailed, unix.ECONNREFUSED, c, &msgproto.Connect{Sock: id}, unix.ECONNREFUSED, 0, "", 0},
		{"peer while connecting", splitConnecting, 0, c, &msgproto.Getpeername{Sock: id}, unix.ENOTCONN, 0, "", 0},
		{"peer when connected", splitConnected, 0, c, &msgproto.Getpeername{Sock: id}, 0, 0, "10.20.0.5:8080", 0},
		{"peer when over", splitOver, 0, c, &msgproto.Getpeername{Sock: id}, 0, 0, "10.20.0.5:8080", 0},
		{"name", splitConnected, 0, c, &msgproto.Getsockname{Sock: id}, 0, 0, "0.0.0.0:0", 0},
		{"so_error once", splitFailed, unix.ETIMEDOUT, c, intOpt(unix.SO_ERROR), 0, int32(unix.ETIMEDOUT), "", 0},
		{"so_type", splitConnected, 0, c, intOpt(unix.SO_TYPE), 0, unix.SOCK_STREAM, "", 0},
		{"so_domain", splitConnected, 0, c, intOpt(unix.SO_DOMAIN), 0, unix.AF_INET, "", 0},
		{"unknown option", splitConnected, 0, c, intOpt(unix.SO_RCVLOWAT), unix.ENOPROTOOPT, 0, "", 0},
		{"short option", splitConnected, 0, c, &msgproto.Getsockopt{Sock: id, Level: unix.SOL_SOCKET, Name: unix.SO_TYPE, MaxLen: 2}, unix.EINVAL, 0, "", 0},
		{"shutdown while connecting", splitConnecting, 0, c, &msgproto.Shutdown{Sock: id, How: unix.SHUT_WR}, unix.ENOTCONN, 0, "", 0},
		{"shutdown", splitConnected, 0, c, &msgproto.Shutdown{Sock: id, How: unix.SHUT_WR}, 0, 0, "", 0},
		{"bind", splitConnected, 0, c, &msgproto.Bind{Sock: id}, unix.EINVAL, 0, "", 0},
		{"sendto", splitConnected, 0, c, &msgproto.SendTo{Sock: id}, unix.EISCONN, 0, "", 0},
		{"another group", splitConnected, 0, other, &msgproto.Getpeername{Sock: id}, unix.ENOTCONN, 0, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set(tc.state, tc.soErr)
			r, e := s.splitCall(tc.c, id, tc.m)
			if got := errnoOf(r, e); got != tc.errno {
				t.Fatalf("errno %v, want %v", got, tc.errno)
			}
			switch r := r.(type) {
			case *msgproto.OptReply:
				if len(r.Value) != 4 || int32(binary.LittleEndian.Uint32(r.Value)) != tc.value {
					t.Fatalf("value %v, want %d", r.Value, tc.value)
				}
			case *msgproto.AddrReply:
				if ap, err := r.Addr.AddrPort(); err != nil || ap.String() != tc.addr {
					t.Fatalf("address %v %v, want %s", ap, err, tc.addr)
				}
			}
			if s.splitSocks[id].soErr != tc.soAfter {
				t.Fatalf("SO_ERROR left %v, want %v", s.splitSocks[id].soErr, tc.soAfter)
			}
		})
	}
	// Options set are read back.
	set(splitConnected, 0)
	nodelay := binary.LittleEndian.AppendUint32(nil, 1)
	s.splitCall(c, id, &msgproto.Setsockopt{Sock: id, Level: unix.IPPROTO_TCP, Name: unix.TCP_NODELAY, Value: nodelay})
	r, e := s.splitCall(c, id, &msgproto.Getsockopt{Sock: id, Level: unix.IPPROTO_TCP, Name: unix.TCP_NODELAY, MaxLen: 4})
	if o, ok := r.(*msgproto.OptReply); e != 0 || !ok || string(o.Value) != string(nodelay) {
		t.Fatalf("TCP_NODELAY read back %v %v", r, e)
	}
	// Close forgets the socket and its alias; a call after it finds
	// nothing.
	s.moved[42] = movedSock{group: 7, sock: id}
	if r, e := s.splitCall(c, id, &msgproto.Close{Sock: id}); errnoOf(r, e) != 0 {
		t.Fatalf("close: %v", errnoOf(r, e))
	}
	if _, ok := s.splitSocks[id]; ok {
		t.Fatal("closed socket still recorded")
	}
	if _, ok := s.moved[42]; ok {
		t.Fatal("alias of a closed socket kept")
	}
	if r, e := s.splitCall(c, id, &msgproto.Getpeername{Sock: id}); errnoOf(r, e) != unix.ENOTCONN {
		t.Fatalf("getpeername after close: %v", errnoOf(r, e))
	}
	// A released group takes its carried sockets along.
	s.splitSocks[id] = &splitSock{group: 7}
	s.mu.Lock()
	s.releaseSplitLocked(7)
	s.mu.Unlock()
	if len(s.splitSocks) != 0 {
		t.Fatal("carried sockets of a released group kept")
	}
}
