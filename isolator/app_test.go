package isolator

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/procstat"
	"github.com/mpshim/mpshim/internal/unixfd"
	"github.com/mpshim/mpshim/mpnet"
	"github.com/mpshim/mpshim/msgproto"
	"github.com/mpshim/mpshim/ring"
)

// kernelINS is a Backend for protocol tests that serves sockets with the
// host kernel instead of a netstack: Connect dials a real TCP connection
// and pumps it to the app's socketpair end; Listen keeps the SEQPACKET end
// so the test can deliver connections on it.
type kernelINS struct {
	id int

	mu      sync.Mutex
	next    uint64
	streams map[uint64]*os.File
	seqs    map[uint64]*os.File
	local   map[uint64]netip.AddrPort
	peer    map[uint64]netip.AddrPort
	calls   []string
	groups  map[uint64]bool
	forgot  []uint64
}

func newKernelINS(id int) *kernelINS {
	return &kernelINS{id: id, streams: map[uint64]*os.File{}, seqs: map[uint64]*os.File{},
		local: map[uint64]netip.AddrPort{}, peer: map[uint64]netip.AddrPort{}, groups: map[uint64]bool{}}
}

func (k *kernelINS) ID() int { return k.id }

func (k *kernelINS) Forget(group uint64) {
	k.mu.Lock()
	k.forgot = append(k.forgot, group)
	k.mu.Unlock()
}

func (k *kernelINS) log(s string, group uint64) {
	k.mu.Lock()
	k.calls = append(k.calls, s)
	k.groups[group] = true
	k.mu.Unlock()
}

func ok0() msgproto.Message { return &msgproto.Reply{} }

func (k *kernelINS) Call(ctx context.Context, group uint64, m msgproto.Message, files ...*os.File) (msgproto.Message, error) {
	k.log(m.Type().String(), group)
	k.mu.Lock()
	defer k.mu.Unlock()
	switch m := m.(type) {
	case *msgproto.Socket:
		k.next++
		id := SockID(k.id, k.next)
		if len(files) > 0 {
			k.streams[id] = files[0]
		}
		return &msgproto.SocketReply{Sock: id}, nil
	case *msgproto.Bind:
		ap, err := m.Addr.AddrPort()
		if err != nil {
			return &msgproto.Reply{Errno: int32(unix.EINVAL)}, nil
		}
		if ap.Port() == 0 {
			ap = netip.AddrPortFrom(ap.Addr(), 40000+uint16(k.next))
		}
		k.local[m.Sock] = ap
		return ok0(), nil
	case *msgproto.Listen:
		if len(files) == 1 {
			k.seqs[m.Sock] = files[0]
		}
		return ok0(), nil
	case *msgproto.Shutdown:
		return ok0(), nil // the half-close travels natively on the socketpair
	case *msgproto.Getsockname:
		return &msgproto.AddrReply{Addr: msgproto.AddrFromNetip(k.local[m.Sock])}, nil
	case *msgproto.Getpeername:
		return &msgproto.AddrReply{Addr: msgproto.AddrFromNetip(k.peer[m.Sock])}, nil
	case *msgproto.Connect:
		f := k.streams[m.Sock]
		ap, _ := m.Addr.AddrPort()
		k.mu.Unlock()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", ap.String())
		k.mu.Lock()
		if err != nil {
			return &msgproto.Reply{Errno: int32(unix.ECONNREFUSED)}, nil
		}
		k.local[m.Sock] = c.LocalAddr().(*net.TCPAddr).AddrPort()
		k.peer[m.Sock] = c.RemoteAddr().(*net.TCPAddr).AddrPort()
		fc, err := net.FileConn(f)
		if err != nil {
			c.Close()
			return &msgproto.Reply{Errno: int32(unix.EIO)}, nil
		}
		go func() { io.Copy(c, fc); c.(*net.TCPConn).CloseWrite() }()
		go func() { io.Copy(fc, c); fc.(*net.UnixConn).CloseWrite() }()
		return ok0(), nil
	}
	closeFiles(files)
	return &msgproto.Reply{Errno: int32(unix.EOPNOTSUPP)}, nil
}

func (k *kernelINS) seq(sock uint64) *os.File {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.seqs[sock]
}

func (k *kernelINS) count(typ string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, c := range k.calls {
		if c == typ {
			n++
		}
	}
	return n
}

// kernelSet is a Backends of kernelINS.
type kernelSet struct {
	mu   sync.Mutex
	all  []*kernelINS
	pick int
}

func (s *kernelSet) Pick() (Backend, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.all) == 0 {
		return nil, errors.New("no INS")
	}
	s.pick++
	return s.all[s.pick%len(s.all)], nil
}

func (s *kernelSet) Get(id int) (Backend, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.all {
		if k.id == id {
			return k, true
		}
	}
	return nil, false
}

// Owner: the kernel stand-ins own no address of their own.
func (s *kernelSet) Owner(netip.Addr) (Backend, bool) { return nil, false }

func (s *kernelSet) All() []Backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Backend, len(s.all))
	for i, k := range s.all {
		out[i] = k
	}
	return out
}

func (s *kernelSet) add(k *kernelINS) {
	s.mu.Lock()
	s.all = append(s.all, k)
	s.mu.Unlock()
}

// startApp runs an AppServer on a fresh socket and returns its path.
func startAppServer(t *testing.T, cfg AppConfig, b Backends) (*AppServer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "reg.sock")
	ln, err := ListenRegistration(path, 0o660, -1)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("registration socket mode %v, %v; want socket 0660", fi.Mode(), err)
	}
	s := NewAppServer(cfg, b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, path
}

// rawRegister sends reg on a new connection and returns the connection and
// the decoded reply (and the ring memfd, if any).
func rawRegister(t *testing.T, path string, reg []byte) (*net.UnixConn, msgproto.Message, *os.File) {
	t.Helper()
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	uc := c.(*net.UnixConn)
	t.Cleanup(func() { uc.Close() })
	if _, err := uc.Write(reg); err != nil {
		t.Fatal(err)
	}
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	oob := make([]byte, 64)
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("reading registration reply: %v", err)
	}
	var memfd *os.File
	if fs, _ := unixfd.Rights(oob[:oobn], "memfd"); len(fs) > 0 {
		memfd = fs[0]
		t.Cleanup(func() { memfd.Close() })
	}
	_, m, err := msgproto.Decode(buf[:n])
	if err != nil {
		t.Fatalf("registration reply: %v", err)
	}
	return uc, m, memfd
}

func selfStat(t *testing.T) procstat.Stat {
	st, err := procstat.Self()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func regMsg(t *testing.T, mut func(*msgproto.Register)) []byte {
	r := &msgproto.Register{PID: uint32(os.Getpid()), ProtoVersion: msgproto.Version, StartTime: selfStat(t).StartTime}
	if mut != nil {
		mut(r)
	}
	b, err := msgproto.Append(nil, 0, 0, r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantErrno(t *testing.T, m msgproto.Message, errno unix.Errno) {
	t.Helper()
	r, ok := m.(*msgproto.Reply)
	if !ok || unix.Errno(r.Errno) != errno {
		t.Fatalf("reply %#v, want Reply{%v}", m, errno)
	}
}

func TestRegistrationRefusals(t *testing.T) {
	_, path := startAppServer(t, AppConfig{}, &kernelSet{})
	cases := []struct {
		name  string
		msg   []byte
		errno unix.Errno
	}{
		{"other pid", regMsg(t, func(r *msgproto.Register) { r.PID = 1 }), unix.EACCES},
		{"wrong start time", regMsg(t, func(r *msgproto.Register) { r.StartTime++ }), unix.EACCES},
		{"protocol version", regMsg(t, func(r *msgproto.Register) { r.ProtoVersion = 99 }), unix.EPROTO},
		{"forked, unknown parent", regMsg(t, func(r *msgproto.Register) { r.Flags = msgproto.RegForked; r.Parent = 77 }), unix.EACCES},
		{"execed, unknown image", regMsg(t, func(r *msgproto.Register) { r.Flags = msgproto.RegExeced; r.Parent = 77 }), unix.EACCES},
		{"unknown flags", regMsg(t, func(r *msgproto.Register) { r.Flags = 8 }), unix.EINVAL},
		{"rejoin without key", regMsg(t, func(r *msgproto.Register) { r.Flags = msgproto.RegRejoin }), unix.EINVAL},
		{"rejoin with parent", regMsg(t, func(r *msgproto.Register) { r.Flags = msgproto.RegRejoin; r.Key = 5; r.Parent = 3 }), unix.EINVAL},
		{"garbage", []byte("GET / HTTP/1.0\r\n\r\n--------------------------------"), unix.EPROTO},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, m, f := rawRegister(t, path, tc.msg)
			if f != nil {
				t.Fatal("refusal carried a descriptor")
			}
			wantErrno(t, m, tc.errno)
		})
	}
	t.Run("longer than a Register", func(t *testing.T) {
		_, m, _ := rawRegister(t, path, append(regMsg(t, nil), 0))
		wantErrno(t, m, unix.EPROTO)
	})
}

// TestProbe asks with RegProbe: an allowed process gets Reply{0} without
// becoming a client, one whose uid is not allowed gets EACCES, and a probe
// that claims a parent or key is refused.
func TestProbe(t *testing.T) {
	cases := []struct {
		name  string
		cfg   AppConfig
		mut   func(*msgproto.Register)
		errno unix.Errno
	}{
		{"allowed", AppConfig{}, nil, 0},
		{"uid not allowed", AppConfig{AllowUIDs: []uint32{uint32(os.Getuid()) + 1}}, nil, unix.EACCES},
		{"with a key", AppConfig{}, func(r *msgproto.Register) { r.Key = 5 }, unix.EINVAL},
		{"other pid", AppConfig{}, func(r *msgproto.Register) { r.PID = 1 }, unix.EACCES},
		{"protocol version", AppConfig{}, func(r *msgproto.Register) { r.ProtoVersion = 99 }, unix.EPROTO},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, path := startAppServer(t, tc.cfg, &kernelSet{})
			_, m, f := rawRegister(t, path, regMsg(t, func(r *msgproto.Register) {
				r.Flags = msgproto.RegProbe
				if tc.mut != nil {
					tc.mut(r)
				}
			}))
			if f != nil {
				t.Fatal("probe answer carried a descriptor")
			}
			wantErrno(t, m, tc.errno)
			if n := s.Clients(); n != 0 {
				t.Fatalf("%d clients after a probe, want 0", n)
			}
			s.mu.Lock()
			groups := len(s.groups)
			s.mu.Unlock()
			if groups != 0 {
				t.Fatalf("%d socket groups after a probe, want 0", groups)
			}
		})
	}
}

// TestMpnetProbe checks the client side of the probe against the server:
// nil when allowed, a RefusedError with EACCES when not, and the dial error
// when nothing listens.
func TestMpnetProbe(t *testing.T) {
	ctx := context.Background()
	s, path := startAppServer(t, AppConfig{}, &kernelSet{})
	if err := mpnet.Probe(ctx, path); err != nil {
		t.Fatalf("Probe of an allowed process: %v", err)
	}
	if n := s.Clients(); n != 0 {
		t.Fatalf("%d clients after a probe, want 0", n)
	}
	_, denied := startAppServer(t, AppConfig{AllowUIDs: []uint32{uint32(os.Getuid()) + 1}}, &kernelSet{})
	var re *mpnet.RefusedError
	if err := mpnet.Probe(ctx, denied); !errors.As(err, &re) || !errors.Is(err, unix.EACCES) {
		t.Fatalf("Probe of a uid not allowed: %v, want a RefusedError with EACCES", err)
	}
	if err := mpnet.Probe(ctx, filepath.Join(t.TempDir(), "none.sock")); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Probe of a missing socket: %v, want ENOENT", err)
	}
}

// TestExecJoinsGroup registers, hangs up, and registers again as the next
// image of the same process (and as a fork child of the gone image, as a
// daemonizing server's child does): with the group's key they join the same
// socket group, without it they are refused, and the group is forgotten only
// once it has had no member for ExecGrace.
func TestExecJoinsGroup(t *testing.T) {
	k := newKernelINS(1)
	set := &kernelSet{}
	set.add(k)
	const grace = time.Second
	s, path := startAppServer(t, AppConfig{ExecGrace: grace}, set)
	forgot := func() int {
		k.mu.Lock()
		defer k.mu.Unlock()
		return len(k.forgot)
	}
	conn, m, _ := rawRegister(t, path, regMsg(t, nil))
	rr, ok := m.(*msgproto.RegisterReply)
	if !ok || rr.Key == 0 {
		t.Fatalf("reply %#v, want a RegisterReply with a group key", m)
	}
	conn.Close()
	waitFor(t, "client gone", func() bool { return s.Clients() == 0 })
	if n := forgot(); n != 0 {
		t.Fatalf("Forget called %d times right after the only member left, want 0 during the grace", n)
	}
	for _, flags := range []uint16{msgproto.RegExeced, msgproto.RegForked} {
		_, m, f := rawRegister(t, path, regMsg(t, func(r *msgproto.Register) { r.Flags = flags; r.Parent = rr.ClientID; r.Key = rr.Key ^ 1 }))
		if f != nil {
			t.Fatal("refusal carried a descriptor")
		}
		wantErrno(t, m, unix.EACCES)
	}
	// A fork child whose parent has already exited (a daemonizing server)
	// joins with the key.
	child, m, f := rawRegister(t, path, regMsg(t, func(r *msgproto.Register) { r.Flags = msgproto.RegForked; r.Parent = rr.ClientID; r.Key = rr.Key }))
	if rc, ok := m.(*msgproto.RegisterReply); !ok || f == nil || rc.Key != rr.Key {
		t.Fatalf("RegForked of a gone parent with the key refused: %#v", m)
	}
	child.Close()
	waitFor(t, "child gone", func() bool { return s.Clients() == 0 })
	_, m, f = rawRegister(t, path, regMsg(t, func(r *msgproto.Register) { r.Flags = msgproto.RegExeced; r.Parent = rr.ClientID; r.Key = rr.Key }))
	rr2, ok := m.(*msgproto.RegisterReply)
	if !ok || f == nil || rr2.Key != rr.Key {
		t.Fatalf("RegExeced of a gone image with the key refused: %#v", m)
	}
	// The server records the client right after sending its reply.
	waitFor(t, "one client in one group", func() bool { st := s.Stats(); return st.Clients == 1 && st.Groups == 1 })
	time.Sleep(2 * grace)
	if n := forgot(); n != 0 {
		t.Fatalf("Forget called %d times while the group has a member", n)
	}
	// A second RegExeced naming the same, now consumed, image is refused.
	_, m, _ = rawRegister(t, path, regMsg(t, func(r *msgproto.Register) { r.Flags = msgproto.RegExeced; r.Parent = rr.ClientID }))
	wantErrno(t, m, unix.EACCES)
}

// TestRejoinKeepsGroup registers processes as a daemon's successor sees
// them after the daemon died (RegRejoin with the key of their group under
// the dead daemon): those presenting one key share one group under that
// key, another key makes another group.
func TestRejoinKeepsGroup(t *testing.T) {
	s, path := startAppServer(t, AppConfig{}, &kernelSet{})
	const key = 0x5eed0001
	rejoin := func(k uint64) *msgproto.RegisterReply {
		t.Helper()
		conn, m, f := rawRegister(t, path, regMsg(t, func(r *msgproto.Register) { r.Flags = msgproto.RegRejoin; r.Key = k }))
		t.Cleanup(func() { conn.Close() })
		rr, ok := m.(*msgproto.RegisterReply)
		if !ok || f == nil {
			t.Fatalf("RegRejoin refused: %#v", m)
		}
		return rr
	}
	a, b := rejoin(key), rejoin(key)
	if a.Key != key || b.Key != key {
		t.Fatalf("rejoined with key %#x: replies carry %#x and %#x", key, a.Key, b.Key)
	}
	waitFor(t, "two clients in one group", func() bool { st := s.Stats(); return st.Clients == 2 && st.Groups == 1 })
	if c := rejoin(key + 2); c.Key != key+2 {
		t.Fatalf("another key: reply carries %#x", c.Key)
	}
	waitFor(t, "three clients in two groups", func() bool { st := s.Stats(); return st.Clients == 3 && st.Groups == 2 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHostileRequests sends malformed ring requests and a FlagFD request
// whose descriptors never come: each gets an errno, and the client keeps
// being served.
func TestHostileRequests(t *testing.T) {
	set := &kernelSet{}
	set.add(newKernelINS(1))
	_, path := startAppServer(t, AppConfig{}, set)
	_, m, memfd := rawRegister(t, path, regMsg(t, nil))
	if _, ok := m.(*msgproto.RegisterReply); !ok {
		t.Fatalf("reply %#v", m)
	}
	p, err := ring.Attach(memfd)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	call := func(req []byte) msgproto.Message {
		t.Helper()
		resp := make([]byte, 1024)
		n, err := p.Call(req, resp)
		if err != nil {
			t.Fatal(err)
		}
		_, m, err := msgproto.Decode(resp[:n])
		if err != nil {
			t.Fatalf("reply does not decode: %v", err)
		}
		return m
	}
	junk := make([]byte, 100)
	rand.Read(junk)
	wantErrno(t, call(junk), unix.EPROTO)
	wantErrno(t, call(nil), unix.EPROTO)
	notReq, _ := msgproto.Append(nil, 5, 0, &msgproto.Reply{})
	wantErrno(t, call(notReq), unix.EPROTO)

	noFD, _ := msgproto.Append(nil, 6, msgproto.FlagFD, &msgproto.Socket{Domain: unix.AF_INET, SockType: unix.SOCK_STREAM})
	start := time.Now()
	wantErrno(t, call(noFD), unix.EBADF)
	if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
		t.Fatalf("missing descriptors refused after %v, want about 1 s", d)
	}
	ok, _ := msgproto.Append(nil, 7, 0, &msgproto.Socket{Domain: unix.AF_INET, SockType: unix.SOCK_STREAM})
	if r, isSock := call(ok).(*msgproto.SocketReply); !isSock || SockINS(r.Sock) != 1 {
		t.Fatalf("a good request after hostile ones: %#v", r)
	}
}

// TestMpnetThroughAppServer runs the Go client against a real AppServer
// whose backends use the kernel: dial + 1 MiB echo, and a listener
// replicated into every backend (and into one spawned later) whose
// connections arrive through the replicas' SEQPACKET ends.
func TestMpnetThroughAppServer(t *testing.T) {
	set := &kernelSet{}
	ks := []*kernelINS{newKernelINS(1), newKernelINS(2), newKernelINS(3)}
	for _, k := range ks {
		set.add(k)
	}
	s, path := startAppServer(t, AppConfig{ExecGrace: 200 * time.Millisecond}, set)
	ctx := context.Background()
	c, err := mpnet.Register(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// An echo server on the kernel.
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			cn, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(cn, cn); cn.Close() }()
		}
	}()
	conn, err := c.Dial(ctx, "tcp", echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if ra := conn.RemoteAddr().(*net.TCPAddr); ra.String() != echo.Addr().String() {
		t.Fatalf("RemoteAddr %v, want %v", ra, echo.Addr())
	}
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	go func() { conn.Write(payload); conn.(interface{ CloseWrite() error }).CloseWrite() }()
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo: %d bytes, equal %v, err %v", len(got), bytes.Equal(got, payload), err)
	}

	// Listener: replicated into INS 1..3 before Listen returns.
	ln, err := c.Listen(ctx, "tcp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lsock := ln.(*mpnet.Listener).Sock()
	for _, k := range ks {
		if k.count("Listen") != 1 {
			t.Fatalf("INS %d saw %d Listen calls, want 1", k.id, k.count("Listen"))
		}
	}
	k4 := newKernelINS(4)
	set.add(k4)
	s.OnSpawn(k4)
	waitFor(t, "replica in the spawned INS", func() bool { return k4.count("Listen") == 1 })
	if st := s.Stats(); st.Listeners != 1 {
		t.Fatalf("stats %+v, want 1 listener", st)
	}
	// Deliver a connection on the replica of INS 4 as an INS would.
	var seq *os.File
	k4.mu.Lock()
	for _, f := range k4.seqs {
		seq = f
	}
	k4.mu.Unlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	an := &msgproto.AcceptNotify{Listener: lsock, Sock: SockID(4, 99),
		Local: msgproto.AddrFromNetip(netip.MustParseAddrPort("10.77.0.13:80")),
		Peer:  msgproto.AddrFromNetip(netip.MustParseAddrPort("10.77.0.1:5555"))}
	msg, _ := msgproto.Append(nil, 0, 0, an)
	if err := unix.Sendmsg(int(seq.Fd()), msg, unix.UnixRights(fds[1]), nil, 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[1])
	ac, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if ac.RemoteAddr().String() != "10.77.0.1:5555" || ac.LocalAddr().String() != "10.77.0.13:80" {
		t.Fatalf("accepted %v -> %v", ac.RemoteAddr(), ac.LocalAddr())
	}
	unix.Write(fds[0], []byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(ac, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	ac.Close()
	// Closing the listener makes the daemon forget it.
	ln.Close()
	waitFor(t, "listener forgotten", func() bool { return s.Stats().Listeners == 0 })
	c.Close()
	waitFor(t, "client gone", func() bool { return s.Clients() == 0 })
	for _, k := range ks {
		waitFor(t, "group forgotten after the grace", func() bool {
			k.mu.Lock()
			defer k.mu.Unlock()
			return len(k.forgot) == 1
		})
	}
}
