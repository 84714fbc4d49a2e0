package split

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/split/gateway"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
	"golang.org/x/sys/unix"
)

// TestGateway runs `isolator split run` as two real processes, site A in
// the wan namespace and site B in the gw namespace, and fetches a file
// with curl on A from nginx on B's loopback through A's split route; a
// route to a destination B does not expose is refused; `isolator peer ls`
// shows the peer with three paths up.
func TestGateway(t *testing.T) {
	bin := harness.Binary(t, "isolator")
	harness.NeedFiles(t, "/usr/bin/curl")
	tp := topo.New(t, topo.Config{Uplinks: len(shapes), Shape: shapes, NoIPv6: true})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for i, u := range tp.Uplinks {
		if out, err := tp.GW.Run(ctx, "ip", "addr", "add", addrB(i).String()+"/24", "dev", u.GWIf); err != nil {
			t.Fatalf("address on B: %v: %s", err, out)
		}
	}
	dir := t.TempDir()
	keygen := func(name string) string {
		out, err := tp.WAN.Run(ctx, bin, "split", "keygen", "--out", filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatalf("keygen: %v: %s", err, out)
		}
		return strings.TrimSpace(out)
	}
	pubA, pubB := keygen("a"), keygen("b")
	if out, err := tp.WAN.Run(ctx, bin, "split", "keygen", "--out", filepath.Join(dir, "a.key")); err == nil {
		t.Fatalf("keygen overwrote a key: %s", out)
	}
	paths := func(self int) string {
		var b strings.Builder
		for i, u := range tp.Uplinks {
			a, bb := u.WANAddr4.String()+":7000", addrB(i).String()+":7000"
			if self == 1 {
				a, bb = bb, a
			}
			fmt.Fprintf(&b, "      - {local: %s, endpoint: %s}\n", a, bb)
		}
		return b.String()
	}
	cfgA := fmt.Sprintf(`key: %[1]s/a.key
status: %[1]s/a.sock
peers:
  - name: b
    key: %[2]s
    paths:
%[3]ssplit:
  - {dst: 127.0.0.1:8080, peer: b, listen: 127.0.0.1:9000}
  - {dst: 10.77.0.2:8080, peer: b, listen: 127.0.0.1:9001}
`, dir, pubB, paths(0))
	cfgB := fmt.Sprintf(`key: %[1]s/b.key
status: %[1]s/b.sock
peers:
  - name: a
    key: %[2]s
    paths:
%[3]sexpose:
  - {peer: a, dst: 127.0.0.1/32}
`, dir, pubA, paths(1))
	for name, c := range map[string]string{"a.yaml": cfgA, "b.yaml": cfgB} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	body := harness.RandomFiles(map[string]int{"f": 16 << 20})["f"]
	harness.StartNginx(t, harness.NginxOptions{NS: tp.GW, Files: map[string][]byte{"f": body}, Config: func(dir, root string) string {
		return fmt.Sprintf("worker_processes 1;\nevents { worker_connections 64; }\nhttp {\n access_log off;\n server {\n  listen 127.0.0.1:8080;\n  listen 10.77.0.2:8080;\n  root %s;\n }\n}\n", root)
	}})
	procs := map[string]*topo.Proc{}
	for _, s := range []struct {
		ns   *topo.NS
		file string
	}{{tp.WAN, "a.yaml"}, {tp.GW, "b.yaml"}} {
		procs[s.file] = startGateway(t, ctx, s.ns, bin, filepath.Join(dir, s.file))
	}
	// Wait for the session.
	var st []gateway.PeerStatus
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := tp.WAN.Run(ctx, bin, "peer", "ls", "--status", filepath.Join(dir, "a.sock"), "-o", "json")
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && len(st) == 1 && st[0].Up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session within 15 s: %v %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out := filepath.Join(dir, "body")
	res, err := tp.WAN.Run(ctx, "curl", "-sS", "--fail", "-o", out, "-w", "%{speed_download}", "http://127.0.0.1:9000/f")
	if err != nil {
		t.Fatalf("curl through the gateway: %v: %s", err, res)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if sum(got) != sum(body) {
		t.Fatalf("body differs: %d bytes, sha256 %s, want %s", len(got), sum(got), sum(body))
	}
	t.Logf("16 MiB through two isolator split gateways: %s bytes/s", strings.TrimSpace(res))
	if res, err := tp.WAN.Run(ctx, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:9001/f"); err == nil {
		t.Fatalf("a destination B does not expose was reached: %.200s", res)
	}
	table, err := tp.WAN.Run(ctx, bin, "peer", "ls", "--status", filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatalf("peer ls: %v: %s", err, table)
	}
	t.Logf("isolator peer ls:\n%s", table)
	rows := 0
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Fields(l); len(f) > 6 && f[0] == "b" && f[6] == "up" {
			rows++
		}
	}
	if rows != len(shapes) {
		t.Errorf("peer ls shows %d paths up, want %d", rows, len(shapes))
	}
	stB, err := gateway.ReadStatus(ctx, filepath.Join(dir, "b.sock"))
	if err != nil {
		t.Fatal(err)
	}
	checkShares(t, stB)

	// B dies without a word (SIGKILL) and starts again: A's side notices
	// (at once if B starts the handshake, after the session timeout if A
	// does) and connections flow again.
	unix.Kill(procs["b.yaml"].PID(), unix.SIGKILL)
	<-procs["b.yaml"].Done()
	killed := time.Now()
	procs["b.yaml"] = startGateway(t, ctx, tp.GW, bin, filepath.Join(dir, "b.yaml"))
	for {
		res, err := tp.WAN.Run(ctx, "curl", "-sS", "--fail", "--max-time", "5", "-o", out, "http://127.0.0.1:9000/f")
		if err == nil {
			got, _ := os.ReadFile(out)
			if sum(got) != sum(body) {
				t.Fatal("body differs after the restart")
			}
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("no connection 30 s after B restarted: %v: %s", err, res)
		}
		time.Sleep(200 * time.Millisecond)
	}
	initiator := "A"
	if pubB < pubA {
		initiator = "B"
	}
	t.Logf("after B was killed and restarted, curl through the tunnel worked again in %v (%s starts handshakes)", time.Since(killed).Round(100*time.Millisecond), initiator)
}

func startGateway(t *testing.T, ctx context.Context, ns *topo.NS, bin, conf string, args ...string) *topo.Proc {
	t.Helper()
	p, err := ns.Start(ctx, bin, append([]string{"split", "run", "--config", conf}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s:\n%s", conf, p.Output())
		}
	})
	return p
}

func checkShares(t *testing.T, stB []gateway.PeerStatus) {
	t.Helper()
	var share float64
	for _, p := range stB[0].Paths {
		share += p.Share
	}
	if len(stB) != 1 || stB[0].Name != "a" || !stB[0].Up || share < 0.99 || share > 1.01 {
		t.Fatalf("B's status: %+v", stB)
	}
}
