package isolator_test

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// TestINSSandbox runs the daemon with two INS and a remote API and checks
// each live INS from outside (its identity, capabilities, seccomp mode,
// namespaces, root and open descriptors, as the kernel reports them) and
// from inside: the hidden probe request makes each INS attempt every act
// its sandbox forbids (reading /etc/shadow, opening host paths, execve,
// host sockets, connecting to the API socket and to the remote API), and
// each must fail. The INS's output reaches the daemon's log labelled.
func TestINSSandbox(t *testing.T) {
	topo.RequireRoot(t)
	harness.EnsureINSUser(t)
	u, err := user.Lookup(config.DefaultINSUser)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(sandbox.ProbeEnv, "1") // the daemon and its INS inherit it
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	remote := "127.0.0.1:47613" // in the gw namespace the test made
	token := filepath.Join(t.TempDir(), "token")
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: []string{"--api-listen", remote, "--api-token-file", token}})
	infos, err := iso.List()
	if err != nil || len(infos) != 2 {
		t.Fatalf("isolator ls: %v, %d INS", err, len(infos))
	}
	daemonNS := map[string]string{}
	for _, ns := range []string{"mnt", "pid", "ipc", "uts", "net"} {
		daemonNS[ns], _ = os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", iso.PID(), ns))
	}
	ids := strings.Repeat(u.Uid+"\t", 3) + u.Uid
	gids := strings.Repeat(u.Gid+"\t", 3) + u.Gid
	seenNS := map[string]int{}
	for _, in := range infos {
		st := readStatus(t, in.PID)
		for k, want := range map[string]string{
			"Uid": ids, "Gid": gids, "Groups": "", "CapInh": "0000000000000000", "CapPrm": "0000000000000000",
			"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
			"NoNewPrivs": "1", "Seccomp": "2",
		} {
			if st[k] != want {
				t.Errorf("INS %d (pid %d): %s = %q, want %q", in.ID, in.PID, k, st[k], want)
			}
		}
		for ns, mine := range daemonNS {
			its, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", in.PID, ns))
			if err != nil || its == mine {
				t.Errorf("INS %d: %s namespace %q (%v) is the daemon's", in.ID, ns, its, err)
			}
			seenNS[ns+its]++
		}
		if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root/", in.PID)); err != nil || len(ents) != 0 {
			t.Errorf("INS %d: its root holds %d entries (%v), want none", in.ID, len(ents), err)
		}
		// No host file is open: sockets, pipes, memfds and anonymous
		// inodes only.
		fdDir := fmt.Sprintf("/proc/%d/fd/", in.PID)
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			l, err := os.Readlink(fdDir + fd.Name())
			if err != nil {
				continue // closed meanwhile
			}
			if !strings.HasPrefix(l, "socket:") && !strings.HasPrefix(l, "pipe:") && !strings.HasPrefix(l, "anon_inode:") && !strings.HasPrefix(l, "/memfd:") {
				t.Errorf("INS %d holds descriptor %s on %s", in.ID, fd.Name(), l)
			}
		}
	}
	for k, n := range seenNS {
		if n > 1 {
			t.Errorf("two INS share the namespace %s", k)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := api.Dial(ctx, iso.API)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Call(ctx, api.Request{Op: api.OpSandboxProbe})
	if err != nil || !resp.OK || len(resp.Probes) != 2 {
		t.Fatalf("sandbox-probe: %v, %+v", err, resp)
	}
	for _, p := range resp.Probes {
		if p.Error != "" {
			t.Fatalf("INS %d probe: %s", p.ID, p.Error)
		}
		acts := map[string]string{}
		for _, r := range p.Results {
			acts[r.Act] = r.Result
			if r.Result == "ok" {
				t.Errorf("INS %d could %s", p.ID, r.Act)
			}
		}
		for _, a := range []string{"read /etc/shadow", "open / (list the root)", "stat /etc/passwd", "execve /bin/sh",
			"connect to the API socket", "connect to the remote API", "socket AF_INET (host TCP)", "socket AF_PACKET"} {
			if _, ok := acts[a]; !ok {
				t.Errorf("INS %d did not try to %s", p.ID, a)
			}
		}
		if r := acts[sandbox.ProbeAcceptOther]; r != "EPERM" {
			t.Errorf("INS %d: %s: %q, want EPERM from the seccomp filter", p.ID, sandbox.ProbeAcceptOther, r)
		}
		t.Logf("INS %d: %v", p.ID, acts)
	}
	// The remote API itself still answers a client with the token.
	if _, err := os.Stat(token); err != nil {
		t.Errorf("remote API token file: %v", err)
	}
	if _, _, ok := iso.WaitLog(time.Time{}, 5*time.Second, "ins[1] ", "INS serving"); !ok {
		t.Errorf("the INS's own log lines do not reach the daemon's log labelled ins[1]")
	}
}

func readStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}
