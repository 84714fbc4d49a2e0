package split

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/isolator/split/gateway"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// TestGatewaySandbox starts `isolator split run --user --empty-root` as
// the daemon does (its own mount, pid, ipc and uts namespaces; here also a
// network namespace of its own, so its subflows stay off the host) with a
// peer that never answers, so that it keeps making subflow sockets once
// sealed. From outside, /proc/PID/status must show no capability,
// no_new_privs and a seccomp filter, the ins_user uid, and its root must
// be empty. From inside (the sandbox-probe request on its status socket,
// enabled by sandbox.ProbeEnv) opening files, execve, forking, ptrace,
// setuid, mount and AF_UNIX, AF_PACKET and AF_NETLINK sockets must fail,
// while AF_INET and AF_INET6 sockets, which the gateway needs, must work.
func TestGatewaySandbox(t *testing.T) {
	topo.RequireRoot(t)
	bin := harness.Binary(t, "isolator")
	harness.EnsureINSUser(t)
	u, err := user.Lookup(config.DefaultINSUser)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	keygen := func(name string) string {
		out, err := exec.CommandContext(ctx, bin, "split", "keygen", "--out", filepath.Join(dir, name+".key")).Output()
		if err != nil {
			t.Fatalf("keygen: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	keygen("a")
	pubB := keygen("b")
	sock := filepath.Join(dir, "a.sock")
	conf := filepath.Join(dir, "a.yaml")
	yaml := fmt.Sprintf(`key: %s/a.key
status: %s
peers:
  - name: b
    key: %s
    paths:
      - {local: 127.0.0.1:7100, endpoint: 127.0.0.1:7101}
`, dir, sock, pubB)
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "split", "run", "--config", conf, "--user", u.Uid+":"+u.Gid, "--empty-root", "--log-level", "debug")
	cmd.Env = append(os.Environ(), sandbox.ProbeEnv+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: sandbox.Cloneflags | syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("gateway output:\n%s", out.String())
		}
	})

	// Sealed once the seccomp filter is on.
	fields := map[string]string{}
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatalf("gateway exited before it was sealed: %v", err)
		}
		clear(fields)
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok {
				fields[k] = strings.TrimSpace(v)
			}
		}
		if fields["Seccomp"] == "2" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("gateway not sealed: Seccomp %q", fields["Seccomp"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []struct{ key, want string }{
		{"CapInh", "0000000000000000"}, {"CapPrm", "0000000000000000"}, {"CapEff", "0000000000000000"},
		{"CapBnd", "0000000000000000"}, {"CapAmb", "0000000000000000"}, {"NoNewPrivs", "1"}, {"Seccomp", "2"},
	} {
		if got := fields[c.key]; got != c.want {
			t.Errorf("/proc/%d/status %s = %q, want %q", pid, c.key, got, c.want)
		}
	}
	if uids := strings.Fields(fields["Uid"]); len(uids) != 4 || uids[0] != u.Uid || uids[1] != u.Uid || uids[2] != u.Uid || uids[3] != u.Uid {
		t.Errorf("Uid %q, want %s four times", fields["Uid"], u.Uid)
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root", pid))
	if err != nil {
		t.Fatalf("root of the gateway: %v", err)
	}
	if len(ents) != 0 {
		t.Errorf("root of the gateway holds %d entries (%s…), want none", len(ents), ents[0].Name())
	}

	// It still serves its status socket.
	if _, err := gateway.ReadStatus(ctx, sock); err != nil {
		t.Fatalf("status of the sealed gateway: %v", err)
	}
	res, err := gateway.SandboxProbe(ctx, sock)
	if err != nil {
		t.Fatalf("sandbox probe: %v", err)
	}
	got := map[string]string{}
	for _, r := range res {
		got[r.Act] = r.Result
		t.Logf("%-45s %s", r.Act, r.Result)
	}
	for _, act := range []string{
		"read /etc/shadow", "open / (list the root)", "open /proc/self/status", "create /tmp/mpshim-probe",
		"stat /etc/passwd", "execve /bin/sh", "socket AF_UNIX", "socket AF_PACKET", "socket AF_NETLINK",
		"fork (clone without CLONE_THREAD)", "ptrace attach to pid 1", "setuid 0", "mount tmpfs",
	} {
		r, ok := got[act]
		switch {
		case !ok:
			t.Errorf("probe did not try %q", act)
		case r == "ok":
			t.Errorf("sealed gateway could %s", act)
		}
	}
	for _, act := range []string{"socket AF_INET (host TCP)", "socket AF_INET6 (host UDP)"} {
		if r := got[act]; r != "ok" {
			t.Errorf("sealed gateway: %s: %s, want ok (its subflows and connections need it)", act, r)
		}
	}
	// Its subflow sockets, made after sealing, are refused nothing.
	time.Sleep(2 * time.Second)
	stop()
	if s := out.String(); strings.Contains(s, "operation not permitted") {
		t.Errorf("the sealed gateway was refused a system call:\n%s", s)
	}
}
