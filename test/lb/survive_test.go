package lb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/lbctl"
	"github.com/mpshim/mpshim/lb/xdp"
	"github.com/mpshim/mpshim/test/topo"
)

// xdpProgID is the id of the XDP program on the uplink's interface in the
// gw namespace, 0 when none is attached (from `ip -d link show`).
func (e *env) xdpProgID(t *testing.T) int {
	t.Helper()
	out, err := e.tp.GW.Run(context.Background(), "ip", "-d", "link", "show", e.tp.Uplinks[0].GWIf)
	if err != nil {
		t.Fatalf("ip link show: %v: %s", err, out)
	}
	m := regexp.MustCompile(`prog/xdp id (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	id, _ := strconv.Atoi(m[1])
	return id
}

// pinDir is where the daemon pins the uplink's balancer under root.
func (e *env) pinDir(t *testing.T, root string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(e.tp.GW.Path(), &st); err != nil {
		t.Fatal(err)
	}
	return lbctl.PinDir(root, st.Ino, e.tp.Uplinks[0].GWIf)
}

// bpffsStateDir returns a state directory for the daemon with a BPF file
// system mounted on its bpf/: the daemon runs under `ip netns exec`, whose
// private /sys would take its /sys/fs/bpf pins with it.
func bpffsStateDir(t *testing.T) string {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	bpf := filepath.Join(state, "bpf")
	if err := os.MkdirAll(bpf, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpf, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", bpf, err)
	}
	t.Cleanup(func() { unix.Unmount(bpf, unix.MNT_DETACH) })
	return state
}

// pinnedFlows reports which of keys the pinned established-flow table
// holds.
func pinnedFlows(t *testing.T, dir string, keys [][xdp.KeySize]byte) int {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "est"), nil)
	if err != nil {
		t.Fatalf("pinned established-flow table: %v", err)
	}
	defer m.Close()
	n := 0
	for _, k := range keys {
		v, err := m.LookupBytes(k)
		if err != nil {
			t.Fatal(err)
		}
		if v != nil {
			n++
		}
	}
	return n
}

// connsFlows sums the members' live connections and established flows in
// `isolator lb status`.
func (e *env) connsFlows(t *testing.T) (conns, flows int) {
	t.Helper()
	for _, m := range e.status(t).Uplinks[0].Members {
		if m.Connections < 0 {
			t.Fatalf("lb status: no live connection count of INS %d", m.ID)
		}
		conns += m.Connections
		flows += m.Flows
	}
	return conns, flows
}

// TestBalancerSurvivesDaemon: VIP served by 2 INS with 20 established
// keep-alive connections through it, then the daemon is killed with
// SIGKILL. Checked: the XDP program stays attached to the uplink (the same
// program id) and its maps stay pinned with every connection's entry in the
// established-flow table; the INS serve on, so every held connection is
// answered while no daemon runs; a restarted daemon takes the pinned
// program over without loading one (same id, "taken_over" in its log),
// adopts the same INS (same pids) and puts them back in their backend
// slots, keeps the connections' entries, answers on every held connection
// again and serves new connections through the VIP; `lb status` counts the
// INS's live connections (20 before and after) apart from the table's
// flows; a stopped daemon (SIGTERM) detaches the program and removes the
// pins.
func TestBalancerSurvivesDaemon(t *testing.T) {
	topo.RequireRoot(t)
	state := bpffsStateDir(t)
	e := setup(t, 2, "--state-dir", state)
	e.waitMembers(t, 10*time.Second, map[int]string{1: "up", 2: "up"})
	dir := e.pinDir(t, filepath.Join(state, "bpf", "mpshim"))
	prog := e.xdpProgID(t)
	if prog == 0 {
		t.Fatal("no XDP program on the uplink")
	}
	if _, err := os.Stat(filepath.Join(dir, "link")); err != nil {
		t.Fatalf("balancer not pinned: %v", err)
	}

	var keys [][xdp.KeySize]byte
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 20 {
		src := e.clients4[i%len(e.clients4)]
		nc, err := e.dialVIP(src, 5*time.Second)
		if err != nil {
			t.Fatalf("dial the VIP from %v: %v", src, err)
		}
		conns = append(conns, nc)
		// One request makes the flow established (its handshake's ACK
		// promoted it).
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(nc, "GET /1k.bin HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		if n, err := nc.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
			t.Fatalf("request through the VIP: %v: %q", err, buf[:n])
		}
		keys = append(keys, xdp.FlowKey(netip.MustParseAddrPort(nc.LocalAddr().String()), netip.MustParseAddrPort(net.JoinHostPort(vip4, "80")), 6))
	}
	if n := pinnedFlows(t, dir, keys); n != len(keys) {
		t.Fatalf("%d of %d connections in the established-flow table", n, len(keys))
	}
	// lb status: CONNS is the INS's live count, FLOWS the table's.
	live, flows := e.connsFlows(t)
	if live != len(keys) || flows < len(keys) {
		t.Fatalf("lb status: %d live connections, %d established flows; want %d and ≥ %d", live, flows, len(keys), len(keys))
	}
	pids := []int{e.insPID(t, 1), e.insPID(t, 2)}

	// ask sends one more request on every held connection.
	ask := func(when string) {
		t.Helper()
		for i, nc := range conns {
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(nc, "GET /1k.bin HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil {
				t.Fatalf("%s: held connection %d: %v", when, i, err)
			}
			buf := make([]byte, 4096)
			if n, err := nc.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
				t.Fatalf("%s: held connection %d: %v: %q", when, i, err, buf[:n])
			}
		}
	}

	e.iso.Kill(t)
	if got := e.xdpProgID(t); got != prog {
		t.Fatalf("XDP program %d on the uplink after the daemon was killed, want %d", got, prog)
	}
	if n := pinnedFlows(t, dir, keys); n != len(keys) {
		t.Fatalf("%d of %d connections in the pinned established-flow table without a daemon", n, len(keys))
	}
	ask("no daemon running")

	since := time.Now()
	e.iso.Restart(t)
	if _, _, ok := e.iso.WaitLog(since, 10*time.Second, "load balancer on", "taken_over=true"); !ok {
		t.Fatalf("the restarted daemon did not take the balancer over:\n%s", e.iso.Log())
	}
	if got := e.xdpProgID(t); got != prog {
		t.Fatalf("XDP program %d after restart, want the pinned %d (reloaded)", got, prog)
	}
	if n := pinnedFlows(t, dir, keys); n != len(keys) {
		t.Fatalf("%d of %d connections in the established-flow table after restart", n, len(keys))
	}
	e.waitMembers(t, 30*time.Second, map[int]string{1: "up", 2: "up"})
	if st := e.status(t); st.Uplinks[0].Established < len(keys) {
		t.Fatalf("lb status after restart: %d established flows, want ≥ %d", st.Uplinks[0].Established, len(keys))
	}
	// The same INS, adopted, with the same connections.
	if now := []int{e.insPID(t, 1), e.insPID(t, 2)}; fmt.Sprint(now) != fmt.Sprint(pids) {
		t.Fatalf("INS pids %v after the restart, were %v (not adopted)", now, pids)
	}
	if live, flows := e.connsFlows(t); live != len(keys) || flows < len(keys) {
		t.Fatalf("lb status after restart: %d live connections, %d established flows; want %d and ≥ %d", live, flows, len(keys), len(keys))
	}
	ask("after the restart")
	// New connections: the adopted INS kept nginx's listeners.
	e.load(t, e.clients4, "http://"+vip4+"/1k.bin", 40)

	e.iso.Stop(t)
	if got := e.xdpProgID(t); got != 0 {
		t.Fatalf("XDP program %d still on the uplink after the daemon stopped", got)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pins left after the daemon stopped: %v", err)
	}
}
