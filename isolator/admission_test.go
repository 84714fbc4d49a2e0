package isolator

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/msgproto"
)

// readFirst connects to path and reads the first message the server sends
// without sending anything.
func readFirst(t *testing.T, path string) (msgproto.Message, error) {
	t.Helper()
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	_, m, err := msgproto.Decode(buf[:n])
	if err != nil {
		t.Fatalf("first message: %v", err)
	}
	return m, nil
}

// TestAdmissionRefusesByPolicyBeforeReading connects as a uid the policy
// does not admit and sends nothing: the server answers RegisterRefused with
// the credentials the kernel reported and closes the connection.
func TestAdmissionRefusesByPolicyBeforeReading(t *testing.T) {
	s, path := startAppServer(t, AppConfig{AllowUIDs: []uint32{uint32(os.Getuid()) + 1}}, &kernelSet{})
	m, err := readFirst(t, path)
	if err != nil {
		t.Fatalf("no refusal before sending a byte: %v", err)
	}
	want := &msgproto.RegisterRefused{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()), Errno: int32(unix.EACCES)}
	if r, ok := m.(*msgproto.RegisterRefused); !ok || *r != *want {
		t.Fatalf("first message %#v, want %#v", m, want)
	}
	if n := s.Pending(); n != 0 {
		t.Fatalf("%d pending after a refusal, want 0", n)
	}
	// The same with a Register sent: refused all the same.
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(regMsg(t, nil)) // may fail with EPIPE once the server has closed
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if errors.Is(err, unix.ECONNRESET) {
		// The server closed with our Register unread: the kernel
		// reports the reset first, then the queued refusal.
		n, err = c.Read(buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, m, err := msgproto.Decode(buf[:n]); err != nil || m.Type() != msgproto.TypeRegisterRefused {
		t.Fatalf("reply %#v (%v), want RegisterRefused", m, err)
	}
	if n, err := c.Read(buf); n != 0 || err == nil {
		t.Fatalf("connection still open after the refusal: read %d, %v", n, err)
	}
}

// TestAdmissionPendingCaps holds connections open without registering:
// the ones beyond the per-uid cap are answered EAGAIN at once, the held
// ones are closed when the register deadline passes, and then a
// registration succeeds again.
func TestAdmissionPendingCaps(t *testing.T) {
	for _, c := range []struct {
		name          string
		total, perUID int
	}{{"per uid", 100, 3}, {"in total", 2, 100}} {
		t.Run(c.name, func(t *testing.T) {
			testPendingCap(t, AppConfig{MaxPendingPerUID: c.perUID, MaxPending: c.total, RegisterTimeout: 500 * time.Millisecond})
		})
	}
}

func testPendingCap(t *testing.T, cfg AppConfig) {
	limit, deadline := min(cfg.MaxPending, cfg.MaxPendingPerUID), cfg.RegisterTimeout
	s, path := startAppServer(t, cfg, &kernelSet{})
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < limit; i++ {
		c, err := net.Dial("unixpacket", path)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitFor(t, "held connections pending", func() bool { return s.Pending() == limit })
	m, err := readFirst(t, path)
	if err != nil {
		t.Fatalf("connection over the cap: %v, want Reply{EAGAIN}", err)
	}
	wantErrno(t, m, unix.EAGAIN)
	// The held ones are closed by the deadline.
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(5 * deadline))
		if n, err := c.Read(make([]byte, 64)); n != 0 || err == nil {
			t.Fatalf("held connection not closed at the deadline: %d bytes, %v", n, err)
		}
	}
	waitFor(t, "nothing pending", func() bool { return s.Pending() == 0 })
	_, m, f := rawRegister(t, path, regMsg(t, nil))
	if _, ok := m.(*msgproto.RegisterReply); !ok || f == nil {
		t.Fatalf("registration after the deadline: %#v", m)
	}
}

// TestAdmissionStrangerFlood has processes of a uid the policy does not
// admit (run with a different uid through SysProcAttr.Credential) hold
// 8,000 connections to the registration socket. The server's descriptors
// stay where they were, and a registration of the admitted uid still
// succeeds meanwhile.
func TestAdmissionStrangerFlood(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run processes as another uid")
	}
	const procs, each = 4, 2000
	s, path := startAppServer(t, AppConfig{}, &kernelSet{})
	// Anyone may connect: the socket's directories are made searchable.
	for _, p := range []string{filepath.Dir(filepath.Dir(path)), filepath.Dir(path)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	// The test binary's directory is private: the helper runs from a copy.
	helper := helperCopy(t)
	fdsBefore := countFDs(t)
	var kids []*exec.Cmd
	t.Cleanup(func() {
		for _, k := range kids {
			k.Process.Kill()
			k.Wait()
		}
	})
	for i := 0; i < procs; i++ {
		cmd := exec.Command(helper, "-test.run=^TestFloodHelper$")
		cmd.Env = append(os.Environ(), "MPSHIM_TEST_FLOOD="+path, "MPSHIM_TEST_FLOOD_N="+strconv.Itoa(each))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kids = append(kids, cmd)
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "held ") {
			t.Fatalf("flood helper: %q, %v", line, err)
		}
		t.Logf("flood helper %d: %s", i, strings.TrimSpace(line))
		if !strings.Contains(line, "refused=RegisterRefused(uid 65534)") {
			t.Fatalf("flood helper was not told it is refused: %s", line)
		}
	}
	// The test process also holds a pipe per helper and whatever the
	// runtime opened meanwhile: a few descriptors, not thousands.
	if d := countFDs(t) - fdsBefore; d > 32 {
		t.Fatalf("server holds %d more descriptors with %d stranger connections open", d, procs*each)
	}
	if n := s.Pending(); n != 0 {
		t.Fatalf("%d pending registrations from a refused uid", n)
	}
	_, m, f := rawRegister(t, path, regMsg(t, nil))
	if _, ok := m.(*msgproto.RegisterReply); !ok || f == nil {
		t.Fatalf("registration during the flood: %#v", m)
	}
}

// TestFloodHelper is not a test: run by TestAdmissionStrangerFlood as
// another uid, it opens MPSHIM_TEST_FLOOD_N connections to the socket
// MPSHIM_TEST_FLOOD, sends nothing, reports what the first one was told
// and holds them until it is killed.
func TestFloodHelper(t *testing.T) {
	path := os.Getenv("MPSHIM_TEST_FLOOD")
	if path == "" {
		t.Skip("helper process of TestAdmissionStrangerFlood")
	}
	n, _ := strconv.Atoi(os.Getenv("MPSHIM_TEST_FLOOD_N"))
	var fds []int
	told := "nothing"
	for i := 0; i < n; i++ {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Printf("socket %d: %v\n", i, err)
			os.Exit(1)
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			fmt.Printf("connect %d: %v\n", i, err)
			os.Exit(1)
		}
		fds = append(fds, fd)
	}
	buf := make([]byte, 256)
	unix.SetsockoptTimeval(fds[0], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	if k, err := unix.Read(fds[0], buf); err == nil {
		if _, m, err := msgproto.Decode(buf[:k]); err == nil {
			if r, ok := m.(*msgproto.RegisterRefused); ok {
				told = fmt.Sprintf("RegisterRefused(uid %d)", r.UID)
			} else {
				told = m.Type().String()
			}
		}
	}
	fmt.Printf("held %d refused=%s\n", len(fds), told)
	time.Sleep(time.Hour)
}

func countFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// helperCopy copies the test binary where another uid can run it.
func helperCopy(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mpshim-helper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	p := dir + "/isolator.test"
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
