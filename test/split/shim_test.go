package split

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/split/gateway"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// TestShimSplit runs site A as an isolator daemon in the gw namespace
// whose YAML has `peers:` and `split: [{dst: 10.20.0.0/16, peer: b}]` (or
// only `split_key:`, and the peer comes with `isolator peer add` at run
// time), and site B as `isolator split run` in the wan namespace with nginx on
// 10.20.0.5 (an address of B's loopback) exposed to A. curl under the shim
// in the app namespace, which has no way out but the isolator, fetches a
// file from 10.20.0.5: the daemon hands the connection to its split
// gateway, which carries it as a yamux stream striped over the three
// shaped links, and B connects to nginx. The body's sha256 must match; a
// destination inside A's split prefix that B does not expose is refused;
// `isolator peer ls` on A shows the three paths up and carrying bytes.
func TestShimSplit(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/bin/curl", "/usr/sbin/nginx")
	for _, c := range []struct {
		name    string
		peerAdd bool
	}{{"yaml", false}, {"peer add", true}} {
		t.Run(c.name, func(t *testing.T) { testShimSplit(t, c.peerAdd) })
	}
}

// streamLine is netflow watch's line of a stream to nginx behind B.
var streamLine = regexp.MustCompile(`(?m)^\d+\s+out\s+10\.20\.0\.5:8080\s`)

func testShimSplit(t *testing.T, peerAdd bool) {
	bin := harness.Binary(t, "isolator")
	tp := topo.New(t, topo.Config{Uplinks: len(shapes), Shape: shapes, NoIPv6: true})
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	// A's gateway talks from an address of its own on each gw uplink end
	// (the INS have theirs on macvlans of them); B from wan's .1.
	for i, u := range tp.Uplinks {
		if out, err := tp.GW.Run(ctx, "ip", "addr", "add", addrB(i).String()+"/24", "dev", u.GWIf); err != nil {
			t.Fatalf("address on A: %v: %s", err, out)
		}
	}
	if out, err := tp.WAN.Run(ctx, "ip", "addr", "add", "10.20.0.5/32", "dev", "lo"); err != nil {
		t.Fatalf("address behind B: %v: %s", err, out)
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	keygen := func(name string) string {
		out, err := tp.WAN.Run(ctx, bin, "split", "keygen", "--out", filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatalf("keygen: %v: %s", err, out)
		}
		return strings.TrimSpace(out)
	}
	pubA, pubB := keygen("a"), keygen("b")
	paths := func(a bool) string {
		var b strings.Builder
		for i, u := range tp.Uplinks {
			local, remote := fmt.Sprintf("%s:%d", addrB(i), tunnelPort), fmt.Sprintf("%s:%d", u.WANAddr4, tunnelPort)
			if !a {
				local, remote = remote, local
			}
			fmt.Fprintf(&b, "      - {local: %s, endpoint: %s}\n", local, remote)
		}
		return b.String()
	}
	cfgA := fmt.Sprintf(`split_key: %[1]s/a.key
split_status: %[1]s/a.sock
peers:
  - name: b
    key: %[2]s
    paths:
%[3]ssplit:
  - {dst: 10.20.0.0/16, peer: b}
`, dir, pubB, paths(true))
	if peerAdd {
		cfgA = fmt.Sprintf("split_key: %[1]s/a.key\nsplit_status: %[1]s/a.sock\n", dir)
	}
	cfgB := fmt.Sprintf(`key: %[1]s/b.key
status: %[1]s/b.sock
peers:
  - name: a
    key: %[2]s
    paths:
%[3]sexpose:
  - {peer: a, dst: 10.20.0.5/32}
`, dir, pubA, paths(false))
	for name, c := range map[string]string{"a.yaml": cfgA, "b.yaml": cfgB} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	body := harness.RandomFiles(map[string]int{"f": 32 << 20})["f"]
	harness.StartNginx(t, harness.NginxOptions{NS: tp.WAN, Files: map[string][]byte{"f": body}, Config: func(dir, root string) string {
		return fmt.Sprintf("worker_processes 1;\nevents { worker_connections 64; }\nhttp {\n access_log off;\n server {\n  listen 10.20.0.5:8080;\n  root %s;\n }\n}\n", root)
	}})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1, Args: []string{"--config", filepath.Join(dir, "a.yaml")}})
	// B is sealed too (--user: ins_user, no capabilities, the gateway's
	// seccomp allow-list), so that its connections to nginx are made
	// under the filter.
	harness.EnsureINSUser(t)
	insUser, err := user.Lookup(config.DefaultINSUser)
	if err != nil {
		t.Fatal(err)
	}
	startGateway(t, ctx, tp.WAN, bin, filepath.Join(dir, "b.yaml"), "--user", insUser.Uid+":"+insUser.Gid)
	if peerAdd {
		spec := "key=" + pubB
		for i, u := range tp.Uplinks {
			spec += fmt.Sprintf(",local=%s:%d,endpoint=%s:%d", addrB(i), tunnelPort, u.WANAddr4, tunnelPort)
		}
		spec += ",split=10.20.0.0/16"
		if out, err := iso.CLI("peer", "add", "b", spec); err != nil {
			t.Fatalf("peer add: %v: %s", err, out)
		}
		if out, err := iso.CLI("peer", "add", "b", spec); err == nil || !strings.Contains(out, "used twice") {
			t.Fatalf("a second peer b was added: %v: %s", err, out)
		}
	}

	var st []gateway.PeerStatus
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := tp.GW.Run(ctx, bin, "peer", "ls", "--status", filepath.Join(dir, "a.sock"), "-o", "json")
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && len(st) == 1 && st[0].Up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session within 20 s: %v %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	env := append(os.Environ(), "LD_PRELOAD="+harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+iso.Socket)
	out := filepath.Join(dir, "body")
	curl := func(args ...string) (string, error) {
		cmd := tp.App.Command(ctx, "curl", args...)
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	res, err := curl("-sS", "--fail", "--max-time", "60", "-o", out, "-w", "%{speed_download}", "http://10.20.0.5:8080/f")
	if err != nil {
		t.Fatalf("curl under the shim through the split tunnel: %v: %s", err, res)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sum(got) != sum(body) {
		t.Fatalf("body differs: %d bytes, sha256 %s, want %s", len(got), sum(got), sum(body))
	}
	var bps float64
	fmt.Sscan(strings.TrimSpace(res), &bps)
	t.Logf("32 MiB, curl under the shim on A from nginx behind B: %.1f Mbit/s (the links sum to %.0f)", bps*8/1e6, sumMbit)

	// Inside A's prefix but not exposed by B: refused, as a connect to a
	// closed port is (curl exit 7, "couldn't connect").
	res, err = curl("-sS", "--max-time", "20", "http://10.20.0.6:8080/f")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("curl to a destination B does not expose: %v, want exit 7 (refused): %.300s", err, res)
	}

	// netflow watch on A shows the tunnel's subflows and, while curl
	// fetches slowly, its stream.
	slow := tp.App.Command(ctx, "curl", "-sS", "--limit-rate", "200k", "-o", "/dev/null", "http://10.20.0.5:8080/f")
	slow.Env = env
	if err := slow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slow.Process.Kill(); slow.Wait() })
	var watch string
	deadline = time.Now().Add(20 * time.Second)
	for {
		b, err := exec.Command(harness.Binary(t, "netflow"), "--api", iso.API, "watch", "--count", "1").CombinedOutput()
		watch = string(b)
		if err == nil && strings.Contains(watch, "SPLIT PEER b") && streamLine.MatchString(watch) && strings.Count(watch, ":7000->") == len(shapes) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("netflow watch does not show the tunnel's subflows and the stream: %v\n%s", err, watch)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("netflow watch on A:\n%s", watch[strings.Index(watch, "SPLIT PEER"):])
	slow.Process.Kill()

	table, err := tp.GW.Run(ctx, bin, "peer", "ls", "--status", filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatalf("peer ls: %v: %s", err, table)
	}
	t.Logf("isolator peer ls on A:\n%s", table)
	stA, err := gateway.ReadStatus(ctx, filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if len(stA) != 1 || stA[0].Name != "b" || len(stA[0].Paths) != len(shapes) {
		t.Fatalf("A's status: %+v", stA)
	}
	for i, p := range stA[0].Paths {
		if !p.Up {
			t.Errorf("path %d is down on A", i)
		}
	}
	stB, err := gateway.ReadStatus(ctx, filepath.Join(dir, "b.sock"))
	if err != nil {
		t.Fatal(err)
	}
	checkShares(t, stB)
	checkGatewayConfined(t, iso)
}

// checkGatewayConfined finds the daemon's split gateway among its children
// and checks that it runs as a user other than root, without
// capabilities, with no_new_privs.
func checkGatewayConfined(t *testing.T, iso *harness.Isolator) {
	t.Helper()
	for _, pid := range harness.Children(iso.PID()) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmdline), "split\x00run") {
			continue
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]func(string) bool{
			"Uid:":        func(v string) bool { return !strings.HasPrefix(v, "0\t") && !strings.Contains(v, "\t0\t") },
			"CapEff:":     func(v string) bool { return strings.Trim(v, "0") == "" },
			"CapPrm:":     func(v string) bool { return strings.Trim(v, "0") == "" },
			"NoNewPrivs:": func(v string) bool { return v == "1" },
		}
		for _, l := range strings.Split(string(status), "\n") {
			f, v, _ := strings.Cut(l, "\t")
			if ok, has := want[f]; has {
				if !ok(strings.TrimSpace(v)) {
					t.Errorf("split gateway (pid %d): %s", pid, l)
				}
				delete(want, f)
			}
		}
		if len(want) != 0 {
			t.Errorf("split gateway (pid %d): status lacks %v", pid, want)
		}
		return
	}
	t.Errorf("no split gateway among the daemon's children %v", harness.Children(iso.PID()))
}
