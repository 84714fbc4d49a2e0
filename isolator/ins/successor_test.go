package ins

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/resolve"
	"github.com/mpshim/mpshim/msgproto"
)

// acceptOne takes the next connection a listener delivers on its
// SOCK_SEQPACKET end lfd and returns the app's stream descriptor.
func acceptOne(t *testing.T, lfd int) int {
	t.Helper()
	buf, oob := make([]byte, 256), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(lfd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	scms, _ := unix.ParseSocketControlMessage(oob[:oobn])
	if len(scms) != 1 {
		t.Fatalf("accept: %d control messages", len(scms))
	}
	fds, err := unix.ParseUnixRights(&scms[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("accept: rights %v %v", fds, err)
	}
	t.Cleanup(func() { unix.Close(fds[0]) })
	return fds[0]
}

// echoOnce answers msg on the app's end fd and checks the WAN client c
// gets it.
func echoOnce(t *testing.T, c net.Conn, fd int, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	app := os.NewFile(uintptr(dupFD(t, fd)), "app")
	defer app.Close()
	if _, err := io.ReadFull(app, buf); err != nil || string(buf) != msg {
		t.Fatalf("app read %q, %v; want %q", buf, err, msg)
	}
	if err := instest.WriteAll(fd, buf); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("client read %q, %v; want %q", got, err, msg)
	}
}

func dupFD(t *testing.T, fd int) int {
	n, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestServeOutlivesDaemon: when the daemon's channel hangs up, a Server
// with a successor socket goes on serving (an open connection keeps
// flowing, a new one is accepted on the listener), and a daemon that then
// connects on the successor socket is served: it learns the listener (with
// its SOCK_SEQPACKET end) and the socket group, and its management
// requests are answered.
func TestServeOutlivesDaemon(t *testing.T) {
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	mine, theirs, err := ctrl.Pair()
	if err != nil {
		t.Fatal(err)
	}
	daemon := ctrl.New(mine)
	go daemon.ReadLoop(func(m ctrl.Msg) { m.CloseFiles() })
	srv := NewServer(1, m.INS, resolve.Config{}, ctrl.New(theirs), slog.Default())
	sc, err := ListenSuccessor(SuccessorConfig{Socket: filepath.Join(t.TempDir(), "1.sock"), DaemonUID: os.Getuid()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.SetSuccessor(sc, cancel)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()

	const group = 77
	rep := srv.socket(group, &msgproto.Socket{Domain: unix.AF_INET, SockType: unix.SOCK_STREAM}, nil)
	id, _ := srv.sock(group, rep.(*msgproto.SocketReply).Sock)
	if e := srv.eng.Bind(id, netip4Any(80)); e != 0 {
		t.Fatalf("bind: %v", e)
	}
	lfd, insEnd := instest.Socketpair(t, unix.SOCK_SEQPACKET)
	if e := srv.eng.Listen(id, 8, insEnd); e != 0 {
		t.Fatalf("listen: %v", e)
	}
	dial := func() net.Conn {
		c, err := gonet.DialTCP(m.WAN, tcpip.FullAddress{Addr: instest.TCPAddr(netip4("10.1.0.2")), Port: 80}, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c1 := dial()
	fd1 := acceptOne(t, lfd)
	echoOnce(t, c1, fd1, "before")

	daemon.Close() // the daemon dies
	select {
	case err := <-served:
		t.Fatalf("Serve returned when the daemon hung up: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	echoOnce(t, c1, fd1, "while no daemon runs")
	c2 := dial()
	echoOnce(t, c2, acceptOne(t, lfd), "accepted while no daemon runs")

	// The successor.
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sc.ln.Addr().String(), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := uc.File()
	uc.Close()
	if err != nil {
		t.Fatal(err)
	}
	next := ctrl.New(f)
	defer next.Close()
	go next.ReadLoop(func(m ctrl.Msg) { m.CloseFiles() })
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	b, _ := json.Marshal(ManageRequest{Op: ManageAdopt})
	r, err := next.Call(cctx, ctrl.Frame{Kind: ctrl.KindManage}, b)
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	defer r.CloseFiles()
	var ar AdoptReply
	if err := json.Unmarshal(r.Payload, &ar); err != nil {
		t.Fatal(err)
	}
	if ar.Version != AdoptVersion || ar.ID != 1 || len(ar.Listeners) != 1 || len(r.Files) != 1 || ar.Orphaned < 200*time.Millisecond ||
		ar.Listeners[0].Group != group || ar.Listeners[0].Addr != "0.0.0.0:80" || len(ar.Groups) == 0 || ar.Groups[0] != group {
		t.Fatalf("adopt reply %+v with %d descriptors", ar, len(r.Files))
	}
	if typ, err := unix.GetsockoptInt(int(r.Files[0].Fd()), unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_SEQPACKET {
		t.Errorf("listener end passed: type %d, %v; want SOCK_SEQPACKET", typ, err)
	}
	b, _ = json.Marshal(ManageRequest{Op: ManageStats})
	sr, err := next.Call(cctx, ctrl.Frame{Kind: ctrl.KindManage}, b)
	if err != nil {
		t.Fatalf("stats over the successor's channel: %v", err)
	}
	var st Status
	if err := json.Unmarshal(sr.Payload, &st); err != nil || st.Engine.Listening != 1 || st.Engine.Connected != 2 {
		t.Errorf("stats after the adoption: %+v, %v; want 1 listener, 2 connections", st.Engine, err)
	}
	echoOnce(t, c1, fd1, "after the adoption")

	cancel()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

func netip4(s string) netip.Addr { return netip.MustParseAddr(s) }

func netip4Any(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.IPv4Unspecified(), port) }

// dialAs connects to the unixpacket socket path with the effective uid
// of the calling thread switched to uid for the connect (SO_PEERCRED
// records the connecting thread's credentials), then switched back.
func dialAs(t *testing.T, path string, uid int) (*net.UnixConn, error) {
	t.Helper()
	runtime.LockOSThread()
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		runtime.UnlockOSThread()
		t.Skipf("setresuid: %v", e)
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		t.Fatalf("setresuid back: %v", e) // the thread stays locked and dies with the test
	}
	runtime.UnlockOSThread()
	return c, err
}

// TestSuccessorRefusesStrangers: a peer that is neither root nor the
// daemon's uid is hung up on, and the INS still waits for its successor;
// one that never comes ends Serve after the orphan timeout.
func TestSuccessorRefusesStrangers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: connects as another uid")
	}
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	mine, theirs, err := ctrl.Pair()
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(1, m.INS, resolve.Config{}, ctrl.New(theirs), slog.Default())
	dir, err := os.MkdirTemp("", "mpshim-succ-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "1.sock")
	sc, err := ListenSuccessor(SuccessorConfig{Socket: path, DaemonUID: 0, OrphanTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("successor socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	os.Chmod(path, 0o666) // let the stranger reach it: the credential check is what is tested
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.SetSuccessor(sc, cancel)
	served := make(chan error, 1)
	start := time.Now()
	go func() { served <- srv.Serve(ctx) }()
	mine.Close() // the daemon dies

	c, err := dialAs(t, path, 65534)
	if err != nil {
		t.Fatalf("stranger's connect: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 16)); n != 0 || (err != nil && err != io.EOF) {
		t.Errorf("stranger read %d bytes, %v; want a hang-up", n, err)
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned after a stranger knocked: %v", err)
	default:
	}
	select {
	case err := <-served:
		if err == nil || time.Since(start) < time.Second {
			t.Errorf("Serve without a successor: %v after %v; want the orphan timeout's error after 2 s", err, time.Since(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running 10 s into a 2 s orphan timeout")
	}
}
