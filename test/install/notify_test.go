package install

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/mpnet"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// TestNotify runs the daemon with NOTIFY_SOCKET naming a datagram socket,
// as systemd does for a Type=notify service: the first message must be
// READY=1, the registration socket must answer a probe as soon as it
// arrives, and SIGTERM must bring STOPPING=1.
func TestNotify(t *testing.T) {
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	dir := t.TempDir()
	ns, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	reg, api := filepath.Join(dir, "isolator.sock"), filepath.Join(dir, "api.sock")
	u := harness.DefaultUplinks(tp)[0]
	cmd := tp.GW.Command(context.Background(), harness.Binary(t, "isolator"), "run", "--socket", reg, "--api", api,
		"--state-dir", filepath.Join(dir, "state"), "--ins", "1", "--uplink", u.Arg("up0"))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(dir, "notify.sock"))
	var log bytes.Buffer
	cmd.Stderr = &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("isolator log:\n%s", log.String())
		}
	}()
	read := func(what string) string {
		t.Helper()
		ns.SetReadDeadline(time.Now().Add(60 * time.Second))
		b := make([]byte, 4096)
		n, err := ns.Read(b)
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		return string(b[:n])
	}
	start := time.Now()
	if got := read("READY=1"); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	ready := time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := mpnet.Probe(ctx, reg); err != nil {
		t.Fatalf("registration socket does not answer right after READY=1: %v", err)
	}
	t.Logf("READY=1 %v after start", ready.Round(time.Millisecond))
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := read("STOPPING=1"); got != "STOPPING=1" {
		t.Fatalf("notification after SIGTERM %q, want STOPPING=1", got)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("isolator did not exit within 10 s of SIGTERM")
	}
}
