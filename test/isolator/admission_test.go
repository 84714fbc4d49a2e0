package isolator_test

import (
	"bufio"
	"context"
	"fmt"
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
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// strangerUID is the uid the tests run strangers as (Debian's nobody).
const strangerUID = 65534

// TestStrangerFlood: processes of a uid the daemon does not admit hold
// 20,000 idle connections to a world-writable registration socket. The
// daemon's descriptors and memory stay within a few MB of idle, every
// stranger is told RegisterRefused, the refusals are logged a few times
// rather than 20,000, and nginx under the shim still registers and serves
// meanwhile.
func TestStrangerFlood(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl")
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1, Args: []string{"--allow-uid", "0", "--allow-uid", "33"}})
	if err := os.Chmod(iso.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	pid := iso.PID()
	time.Sleep(time.Second) // let the start settle
	fds0, rss0 := harness.FDs(pid), harness.RSSKiB(pid)
	start := time.Now()
	const procs, each = 4, 5000 // each helper stays under the 20,000-descriptor limit
	holdConnections(t, iso.Socket, procs, each)
	fds1, rss1 := harness.FDs(pid), harness.RSSKiB(pid)
	t.Logf("daemon idle: %d fds, %d KiB RSS; holding %d stranger connections (%v to open): %d fds, %d KiB RSS",
		fds0, rss0, procs*each, time.Since(start).Round(time.Millisecond), fds1, rss1)
	if d := fds1 - fds0; d > 16 {
		t.Errorf("daemon has %d more descriptors with the stranger connections open", d)
	}
	if d := rss1 - rss0; d > 8<<10 {
		t.Errorf("daemon RSS grew by %d KiB with the stranger connections open, want at most 8 MiB", d)
	}
	if n := strings.Count(iso.Log(), "registration refused by policy"); n < 1 || n > 10 {
		t.Errorf("daemon logged %d refusals for %d strangers, want a few (rate-limited)", n, procs*each)
	}

	// An admitted app registers and serves with the strangers still
	// connected.
	files := harness.RandomFiles(map[string]int{"64k.bin": 64 << 10})
	harness.StartNginx(t, harness.NginxOptions{NS: tp.App, Shim: iso, Files: files, Config: func(dir, root string) string {
		return fmt.Sprintf("worker_processes 1;\nevents { worker_connections 256; }\nhttp {\n access_log off;\n server {\n  listen 80;\n  root %s;\n }\n}\n", root)
	}})
	infos, err := iso.List()
	if err != nil || len(infos) == 0 || len(infos[0].Uplinks) == 0 {
		t.Fatalf("isolator ls: %v, %+v", err, infos)
	}
	addr := strings.Split(infos[0].Uplinks[0].Addr4, "/")[0]
	harness.Fetch(t, tp.WAN, nil, "http://"+addr+"/64k.bin", files["64k.bin"])
	if fds2 := harness.FDs(pid); fds2-fds0 > 64 {
		t.Errorf("daemon has %d descriptors serving nginx among the strangers, %d idle", fds2, fds0)
	}
}

// TestRefusedNeverFailsOpen: curl under the shim as a uid the daemon does
// not admit, with MPSHIM_FAIL=open, must fail and say it was refused by
// policy (naming the uid and the socket), where the same curl reaches the
// server without the shim, and with the shim when no isolator is there at
// all (the absence MPSHIM_FAIL=open is for).
func TestRefusedNeverFailsOpen(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl", "/usr/bin/setpriv")
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	if err := os.Chmod(iso.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	files := harness.RandomFiles(map[string]int{"1k.bin": 1 << 10})
	wan := tp.Uplinks[0].WANAddr4.String()
	harness.StartNginx(t, harness.NginxOptions{NS: tp.WAN, Files: files, Config: func(dir, root string) string {
		return fmt.Sprintf("worker_processes 1;\nevents { worker_connections 64; }\nhttp {\n access_log off;\n server {\n  listen %s:8088;\n  root %s;\n }\n}\n", wan, root)
	}})
	url := "http://" + wan + ":8088/1k.bin"
	lib := harness.Binary(t, "libmpshim.so")
	curl := func(env ...string) (string, string, error) {
		// Entering the namespace needs root: setpriv drops to the
		// stranger's uid inside it, before curl runs.
		id := strconv.Itoa(strangerUID)
		cmd := tp.WAN.Command(context.Background(), "setpriv", "--reuid", id, "--regid", id, "--clear-groups",
			"curl", "-sS", "--fail", "--max-time", "10", url)
		cmd.Env = append(os.Environ(), env...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	if out, errOut, err := curl(); err != nil || out != string(files["1k.bin"]) {
		t.Fatalf("curl without the shim: %v, %d bytes\n%s", err, len(out), errOut)
	}
	out, errOut, err := curl("LD_PRELOAD="+lib, "MPSHIM_SOCKET="+iso.Socket, "MPSHIM_FAIL=open")
	if err == nil || out != "" {
		t.Fatalf("curl refused by policy with MPSHIM_FAIL=open succeeded (%d bytes): the refusal became a bypass\n%s", len(out), errOut)
	}
	want := fmt.Sprintf("refused by policy: the isolator at %s refuses uid %d", iso.Socket, strangerUID)
	if !strings.Contains(errOut, want) {
		t.Fatalf("curl's stderr does not say %q:\n%s", want, errOut)
	}
	if strings.Contains(errOut, "unreachable") {
		t.Fatalf("a refusal is reported as an absence:\n%s", errOut)
	}
	t.Logf("refused curl: %v\n%s", err, errOut)
	if _, _, ok := iso.WaitLog(time.Time{}, 5*time.Second, "registration refused by policy", fmt.Sprintf("uid=%d", strangerUID)); !ok {
		t.Errorf("the daemon did not log the refusal of uid %d", strangerUID)
	}
	// The socket's permissions refuse the stranger: a refusal too.
	if err := os.Chmod(iso.Socket, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = curl("LD_PRELOAD="+lib, "MPSHIM_SOCKET="+iso.Socket, "MPSHIM_FAIL=open")
	want = fmt.Sprintf("refused by policy: uid %d (gid %d) may not connect to the isolator's socket %s", strangerUID, strangerUID, iso.Socket)
	if err == nil || out != "" || !strings.Contains(errOut, want) {
		t.Fatalf("curl denied by the socket's mode with MPSHIM_FAIL=open: %v, %d bytes; want a failure saying %q:\n%s", err, len(out), want, errOut)
	}
	// Absence: no isolator at the path; MPSHIM_FAIL=open uses the kernel.
	none := filepath.Join(os.TempDir(), fmt.Sprintf("mpshim-none-%d.sock", os.Getpid()))
	out, errOut, err = curl("LD_PRELOAD="+lib, "MPSHIM_SOCKET="+none, "MPSHIM_FAIL=open")
	if err != nil || out != string(files["1k.bin"]) {
		t.Fatalf("curl with no isolator and MPSHIM_FAIL=open: %v, %d bytes\n%s", err, len(out), errOut)
	}
	if !strings.Contains(errOut, "unreachable") {
		t.Errorf("absence not announced on stderr: %q", errOut)
	}
}

// holdConnections runs procs helper processes as strangerUID that each
// open n connections to path and hold them; it returns once all are open
// (the helpers are killed at cleanup) and fails t unless every helper was
// told RegisterRefused.
func holdConnections(t *testing.T, path string, procs, n int) {
	t.Helper()
	helper := helperCopy(t)
	var kids []*exec.Cmd
	t.Cleanup(func() {
		for _, k := range kids {
			k.Process.Kill()
			k.Wait()
		}
	})
	for i := 0; i < procs; i++ {
		cmd := exec.Command(helper, "-test.run=^TestHoldHelper$")
		cmd.Env = append(os.Environ(), "MPSHIM_TEST_HOLD="+path, "MPSHIM_TEST_HOLD_N="+strconv.Itoa(n))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: strangerUID, Gid: strangerUID}}
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
		if err != nil || !strings.HasPrefix(line, fmt.Sprintf("held %d,", n)) {
			t.Fatalf("helper %d: %q, %v", i, line, err)
		}
		if want := fmt.Sprintf("RegisterRefused(uid %d)", strangerUID); !strings.Contains(line, want) {
			t.Fatalf("helper %d was not told %s: %s", i, want, line)
		}
	}
}

// TestHoldHelper is not a test: run by holdConnections as another uid, it
// opens MPSHIM_TEST_HOLD_N connections to the socket MPSHIM_TEST_HOLD,
// sends nothing, reports what the first one was told and holds them all
// until it is killed.
func TestHoldHelper(t *testing.T) {
	path := os.Getenv("MPSHIM_TEST_HOLD")
	if path == "" {
		t.Skip("helper process of holdConnections, not a test")
	}
	n, _ := strconv.Atoi(os.Getenv("MPSHIM_TEST_HOLD_N"))
	fds := make([]int, 0, n)
	for i := 0; i < n; i++ {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		}
		if err != nil {
			fmt.Printf("connection %d: %v\n", i, err)
			os.Exit(1)
		}
		fds = append(fds, fd)
	}
	told := "nothing"
	buf := make([]byte, 256)
	unix.SetsockoptTimeval(fds[0], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	if k, err := unix.Read(fds[0], buf); err != nil {
		told = err.Error()
	} else if _, m, err := msgproto.Decode(buf[:k]); err != nil {
		told = err.Error()
	} else if r, ok := m.(*msgproto.RegisterRefused); ok {
		told = fmt.Sprintf("RegisterRefused(uid %d)", r.UID)
	} else {
		told = m.Type().String()
	}
	fmt.Printf("held %d, told %s\n", len(fds), told)
	time.Sleep(time.Hour)
}

// helperCopy copies the test binary where another uid can run it (the
// test binary's own directory is private).
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
	p := filepath.Join(dir, "helper.test")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
