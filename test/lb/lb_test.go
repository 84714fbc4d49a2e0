// Package lb tests the isolator's load balancer end to end: Debian's nginx
// under libmpshim.so behind a VIP that every INS holds, the XDP program on
// the uplink's interface in the gw namespace, and curl in the wan
// namespace from many client addresses.
package lb

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

const (
	vip4 = "10.77.0.5"
	vip6 = "fd77::5"
)

// env is one topology with a daemon balancing the VIPs and nginx behind them.
type env struct {
	tp    *topo.Topology
	iso   *harness.Isolator
	nginx *harness.Nginx
	// clients are the extra client addresses on the wan end.
	clients4, clients6 []netip.Addr
	// spawnedAt is when the last spawn returned.
	spawnedAt time.Time
}

func setup(t *testing.T, ins int, extra ...string) *env {
	t.Helper()
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl")
	tp := topo.New(t, topo.Config{Uplinks: 1, Direct: true})
	args := append([]string{"--allow-uid", "0", "--allow-uid", "33", "--vip", "up0=" + vip4, "--vip", "up0=" + vip6}, extra...)
	iso := harness.StartIsolator(t, tp, harness.Options{INS: ins, Args: args})
	n := harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso,
		Files: harness.RandomFiles(map[string]int{"1k.bin": 1 << 10}),
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 2;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 120;
    keepalive_requests 1000000;
    server {
        listen 80;
        listen [::]:80;
        root %s;
    }
}
`, root)
		},
	})
	e := &env{tp: tp, iso: iso, nginx: n}
	// Ten client addresses of each family on the wan end of the uplink.
	for i := range 10 {
		a4 := netip.AddrFrom4([4]byte{10, 77, 0, byte(101 + i)})
		a6 := netip.MustParseAddr(fmt.Sprintf("fd77::%x", 0x101+i))
		for _, a := range []string{a4.String() + "/24", a6.String() + "/64"} {
			if _, err := tp.WAN.Run(context.Background(), "ip", "addr", "add", a, "dev", tp.Uplinks[0].WANIf, "nodad"); err != nil {
				t.Fatal(err)
			}
		}
		e.clients4, e.clients6 = append(e.clients4, a4), append(e.clients6, a6)
	}
	return e
}

// status is `isolator lb status -o json`.
func (e *env) status(t *testing.T) api.LBStatus {
	t.Helper()
	out, err := e.iso.CLI("lb", "status", "-o", "json")
	if err != nil {
		t.Fatalf("isolator lb status: %v: %s", err, out)
	}
	var st api.LBStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("isolator lb status -o json: %v: %s", err, out)
	}
	if len(st.Uplinks) != 1 {
		t.Fatalf("lb status: %d balanced uplinks, want 1: %s", len(st.Uplinks), out)
	}
	return st
}

// members returns the members by INS id.
func (e *env) members(t *testing.T) map[int]api.LBMember {
	t.Helper()
	out := map[int]api.LBMember{}
	for _, m := range e.status(t).Uplinks[0].Members {
		out[m.ID] = m
	}
	return out
}

// waitMembers waits until the pool's members and their states are want.
func (e *env) waitMembers(t *testing.T, limit time.Duration, want map[int]string) map[int]api.LBMember {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ms := e.members(t)
		ok := len(ms) == len(want)
		for id, st := range want {
			if ms[id].State != st {
				ok = false
			}
		}
		if ok {
			return ms
		}
		if time.Now().After(deadline) {
			t.Fatalf("lb members %v, want states %v within %v", ms, want, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.iso.CLI(args...)
	if err != nil {
		t.Fatalf("isolator %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// curl fetches url n times, each on a connection of its own (the server
// closes it), from client address src, and returns the HTTP status of
// every transfer ("000" for one that failed).
func (e *env) curl(t *testing.T, src netip.Addr, url string, n int) []string {
	t.Helper()
	args := []string{"-sS", "-g", "--max-time", "20", "--interface", src.String(), "-H", "Connection: close",
		"-w", "%{http_code}\\n"}
	for range n {
		args = append(args, "-o", "/dev/null", url)
	}
	out, _ := e.tp.WAN.Command(context.Background(), "curl", args...).Output()
	return strings.Fields(string(out))
}

// load opens n connections to url spread over the client addresses, ten
// curls at a time, and fails the test for any transfer that did not get 200.
func (e *env) load(t *testing.T, clients []netip.Addr, url string, n int) {
	t.Helper()
	per := n / len(clients)
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := map[string]int{}
	got := 0
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes := e.curl(t, c, url, per)
			mu.Lock()
			defer mu.Unlock()
			got += len(codes)
			for _, s := range codes {
				if s != "200" {
					bad[s]++
				}
			}
		}()
	}
	wg.Wait()
	if got != per*len(clients) || len(bad) > 0 {
		t.Fatalf("%s: %d of %d transfers reported, non-200 statuses %v", url, got, per*len(clients), bad)
	}
}

func ids(ms map[int]api.LBMember) []int {
	var out []int
	for id := range ms {
		out = append(out, id)
	}
	return out
}

// TestVIPSharesByWeight serves both VIPs from three INS, sets their weights
// 1:2:3 and checks that 10,000 connections from ten client addresses reach
// each INS by its weight (checkShares).
func TestVIPSharesByWeight(t *testing.T) {
	e := setup(t, 3)
	ms := e.waitMembers(t, 10*time.Second, map[int]string{1: "up", 2: "up", 3: "up"})
	for id, m := range ms {
		if math.Abs(m.Share-1.0/3) > 0.01 {
			t.Errorf("INS %d holds %.3f of the table, want 1/3", id, m.Share)
		}
	}
	for _, url := range []string{"http://" + vip4 + "/1k.bin", "http://[" + vip6 + "]/1k.bin"} {
		if codes := e.curl(t, e.clients4[0], url, 1); len(codes) != 1 || codes[0] != "200" {
			// IPv6 from an IPv6 client.
			if strings.Contains(url, "[") {
				codes = e.curl(t, e.clients6[0], url, 1)
			}
			if len(codes) != 1 || codes[0] != "200" {
				t.Fatalf("curl %s: %v", url, codes)
			}
		}
	}
	if _, err := e.iso.CLI("lb", "weight", "2", "0"); err == nil {
		t.Errorf("lb weight 2 0 was accepted")
	}
	if _, err := e.iso.CLI("lb", "weight", "99", "1"); err == nil {
		t.Errorf("lb weight for INS 99, which does not exist, was accepted")
	}
	e.checkShares(t, map[int]int{1: 1, 2: 2, 3: 3}, 8000, 2000)
}

// TestSharesFull is the acceptance's full-size check (make lb-shares runs
// only it): 20 INS with weights 1 to 5, 100,000 connections from ten
// client addresses, each an HTTP request. It takes minutes here: the INS
// and nginx under the shim accept some 500 connections a second on this
// machine, and the clients wait for each answer, as a connection opened
// without one would only fill the listener's queue (a test that opened
// handshakes and reset them at once saw fetches time out behind them).
func TestSharesFull(t *testing.T) {
	e := setup(t, 20)
	weights := map[int]int{}
	want := map[int]string{}
	for id := 1; id <= 20; id++ {
		weights[id] = (id-1)%5 + 1
		want[id] = "up"
	}
	e.waitMembers(t, 30*time.Second, want)
	start := time.Now()
	e.checkShares(t, weights, 100000, 0)
	t.Logf("100,000 connections in %v", time.Since(start).Round(time.Second))
}

// checkShares sets the INS weights, opens n4 connections to the IPv4 VIP
// and n6 to the IPv6 one from the client addresses, and checks each INS's
// share of them against its weight: within ±10% by the program's count of
// new flows per INS, within ±25% by the packets each INS received (which
// vary a little per connection: retransmissions, delayed ACKs).
func (e *env) checkShares(t *testing.T, weights map[int]int, n4, n6 int) {
	t.Helper()
	sum := 0
	for id, w := range weights {
		e.cli(t, "lb", "weight", strconv.Itoa(id), strconv.Itoa(w))
		sum += w
	}
	before := e.members(t)
	for id, m := range before {
		want := float64(weights[id]) / float64(sum)
		if math.Abs(m.Share-want) > 0.1*want {
			t.Errorf("INS %d holds %.4f of the table, want %.4f", id, m.Share, want)
		}
	}
	rx := func() map[int]uint64 {
		infos, err := e.iso.List()
		if err != nil {
			t.Fatal(err)
		}
		out := map[int]uint64{}
		for _, in := range infos {
			for _, u := range in.Uplinks {
				out[in.ID] += u.RxPackets
			}
		}
		return out
	}
	rx0 := rx()
	if n4 > 0 {
		e.load(t, e.clients4, "http://"+vip4+"/1k.bin", n4)
	}
	if n6 > 0 {
		e.load(t, e.clients6, "http://["+vip6+"]/1k.bin", n6)
	}
	after := e.members(t)
	rx1 := rx()
	var total, rxTotal uint64
	for id := range after {
		total += after[id].NewFlows - before[id].NewFlows
		rxTotal += rx1[id] - rx0[id]
	}
	// A client port used again while its earlier flow is still in the
	// established table is no new flow (it goes where that one went, as
	// the table would send it), so with many connections per client
	// address fewer than n4+n6 are counted; their shares are what the
	// table decided.
	if total < uint64(n4+n6)/2 {
		t.Fatalf("the program counted %d new flows of %d connections", total, n4+n6)
	}
	worst, worstRx := 0.0, 0.0
	for id, m := range after {
		want := float64(weights[id]) / float64(sum)
		got := float64(m.NewFlows-before[id].NewFlows) / float64(total)
		gotRx := float64(rx1[id]-rx0[id]) / float64(rxTotal)
		worst = max(worst, math.Abs(got-want)/want)
		worstRx = max(worstRx, math.Abs(gotRx-want)/want)
		t.Logf("INS %d weight %d: %.4f of new flows, %.4f of received packets, want %.4f", id, m.Weight, got, gotRx, want)
		if math.Abs(got-want) > 0.1*want {
			t.Errorf("INS %d got %.4f of the new flows, want %.4f ±10%%", id, got, want)
		}
		if math.Abs(gotRx-want) > 0.25*want {
			t.Errorf("INS %d received %.4f of the packets, want %.4f ±25%%", id, gotRx, want)
		}
	}
	t.Logf("%d INS, %d connections (%d new flows counted): the largest deviation of a share from its weight is %.1f%% by new flows, %.1f%% by received packets",
		len(after), n4+n6, total, 100*worst, 100*worstRx)
}

// dialVIP connects from src, a client address of the WAN namespace, to
// the VIP's port 80.
func (e *env) dialVIP(src netip.Addr, timeout time.Duration) (net.Conn, error) {
	var nc net.Conn
	err := e.tp.WAN.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: timeout}
		var err error
		nc, err = d.Dial("tcp", net.JoinHostPort(vip4, "80"))
		return err
	})
	return nc, err
}

// conn is one long-lived client connection that sends a request every
// 100 ms on keep-alive.
type conn struct {
	src      netip.AddrPort // its client address and port
	requests int
	err      error // the first error; the connection stops there
	errAt    time.Time
}

// run sends requests on c until stop is closed or a request fails.
func (c *conn) run(nc net.Conn, stop <-chan struct{}, want int) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(nc, "GET /1k.bin HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil {
			c.err, c.errAt = err, time.Now()
			return
		}
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			var n int64
			n, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && (resp.StatusCode != 200 || n != int64(want)) {
				err = fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
			}
		}
		if err != nil {
			c.err, c.errAt = err, time.Now()
			return
		}
		c.requests++
	}
}

// flowINS maps the client address and port of every flow to the VIP to the
// INS that carries it, from `netflow ls -o json`.
func (e *env) flowINS(t *testing.T) map[netip.AddrPort]int {
	t.Helper()
	out, err := exec.Command(harness.Binary(t, "netflow"), "--api", e.iso.API, "ls", "-o", "json").Output()
	if err != nil {
		t.Fatalf("netflow ls: %v", err)
	}
	m := map[netip.AddrPort]int{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var f netflow.Flow
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("netflow ls -o json: %v", err)
		}
		if f.Dst.String() == vip4 && f.DstPort == 80 {
			m[netip.AddrPortFrom(f.Src, f.SrcPort)] = f.INS
		}
	}
	return m
}

// insPID is the pid of INS id from `isolator ls`.
func (e *env) insPID(t *testing.T, id int) int {
	t.Helper()
	infos, err := e.iso.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		if in.ID == id {
			return in.PID
		}
	}
	t.Fatalf("no INS %d in isolator ls", id)
	return 0
}

// spawn runs `isolator spawn -n n` and checks that the pool has the new INS
// up in the first status after spawn returned.
func (e *env) spawn(t *testing.T, n int) []int {
	t.Helper()
	before := e.members(t)
	e.cli(t, "spawn", "-n", strconv.Itoa(n))
	e.spawnedAt = time.Now()
	after := e.members(t)
	var added []int
	for id, m := range after {
		if _, ok := before[id]; !ok {
			if m.State != "up" || m.Share == 0 {
				t.Errorf("INS %d spawned: %s with %.3f of the table, want up with a share", id, m.State, m.Share)
			}
			added = append(added, id)
		}
	}
	if len(added) != n {
		t.Fatalf("spawn -n %d: the pool got INS %v", n, added)
	}
	return added
}

// TestAffinity keeps 60 connections from ten client addresses busy with a
// request every 100 ms while INS are spawned (5), drained (2) and one is
// killed with SIGKILL: no connection fails but those the killed INS
// carried. New flows reach a spawned INS at once; the killed INS is down in
// the pool until its replacement is up; a drained INS, then stopped,
// leaves the pool.
func TestAffinity(t *testing.T) {
	e := setup(t, 4)
	e.waitMembers(t, 10*time.Second, map[int]string{1: "up", 2: "up", 3: "up", 4: "up"})
	const perClient = 6
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var conns []*conn
	for _, src := range e.clients4 {
		for range perClient {
			nc, err := e.dialVIP(src, 5*time.Second)
			if err != nil {
				close(stop)
				t.Fatalf("dial the VIP from %v: %v", src, err)
			}
			c := &conn{src: netip.MustParseAddrPort(nc.LocalAddr().String())}
			conns = append(conns, c)
			wg.Add(1)
			go func() { defer wg.Done(); c.run(nc, stop, 1024) }()
		}
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	// The flow records say which INS carries each connection.
	var owner map[netip.AddrPort]int
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		owner = e.flowINS(t)
		missing := 0
		for _, c := range conns {
			if _, ok := owner[c.src]; !ok {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no flow record for %d of %d connections after 15 s", missing, len(conns))
		}
	}
	carried := map[int]int{}
	for _, c := range conns {
		carried[owner[c.src]]++
	}
	t.Logf("connections per INS: %v", carried)
	for id := 1; id <= 4; id++ {
		if carried[id] == 0 {
			t.Fatalf("INS %d carries none of %d connections: %v", id, len(conns), carried)
		}
	}

	// A prober opens a connection to the VIP every 2 ms: how soon after
	// spawn returns does a spawned INS get one?
	probeStop := make(chan struct{})
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		for i := 0; ; i++ {
			select {
			case <-probeStop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			nc, _ := e.dialVIP(e.clients4[i%len(e.clients4)], time.Second)
			if nc != nil {
				nc.SetDeadline(time.Now().Add(2 * time.Second))
				io.WriteString(nc, "GET /1k.bin HTTP/1.0\r\n\r\n")
				io.Copy(io.Discard, nc)
				nc.Close()
			}
		}
	}()
	spawned := e.spawn(t, 2)
	reached := time.Duration(-1)
	for deadline := e.spawnedAt.Add(5 * time.Second); time.Now().Before(deadline) && reached < 0; {
		ms := e.members(t)
		for _, id := range spawned {
			if ms[id].NewFlows > 0 {
				reached = time.Since(e.spawnedAt)
			}
		}
	}
	close(probeStop)
	<-probeDone
	if reached < 0 {
		t.Fatalf("no new flow reached the spawned INS %v within 5 s of spawn returning", spawned)
	}
	// The figure includes one lb status call (a process start); the pool
	// has the INS before spawn returns.
	t.Logf("a spawned INS had its first new flow %v after spawn returned (probing every 2 ms)", reached.Round(time.Millisecond))
	// New flows reach a spawned INS: 100 connections right after spawn
	// returned, of which a share go to the new ones.
	before := e.members(t)
	e.load(t, e.clients4, "http://"+vip4+"/1k.bin", 100)
	after := e.members(t)
	for _, id := range spawned {
		if after[id].NewFlows == before[id].NewFlows {
			t.Errorf("spawned INS %d got none of 100 new flows", id)
		}
	}
	e.cli(t, "lb", "drain", "1")
	const killed = 2
	pid := e.insPID(t, killed)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	// Down at once (the daemon's wait returns), up again once replaced.
	deadline := time.Now().Add(5 * time.Second)
	for e.members(t)[killed].State == "up" && e.members(t)[killed].MAC != "" && e.insPID(t, killed) == pid {
		if time.Now().After(deadline) {
			t.Fatalf("INS %d still up in the pool 5 s after SIGKILL", killed)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("INS %d out of the pool %v after SIGKILL", killed, time.Since(killedAt).Round(time.Millisecond))
	spawned = append(spawned, e.spawn(t, 3)...)
	e.cli(t, "lb", "drain", "3")
	want := map[int]string{1: "draining", 2: "up", 3: "draining", 4: "up"}
	for _, id := range spawned {
		want[id] = "up"
	}
	ms := e.waitMembers(t, 30*time.Second, want)
	for _, id := range []int{1, 3} {
		if ms[id].Share != 0 {
			t.Errorf("draining INS %d holds %.3f of the table", id, ms[id].Share)
		}
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	for _, c := range conns {
		id := owner[c.src]
		switch {
		case c.err != nil && id != killed:
			t.Errorf("connection from %v on INS %d failed after %d requests: %v", c.src, id, c.requests, c.err)
		case c.err == nil && id == killed:
			t.Errorf("connection from %v on the killed INS %d kept working", c.src, id)
		case c.err == nil && c.requests < 20:
			t.Errorf("connection from %v on INS %d made only %d requests", c.src, id, c.requests)
		}
	}

	// Drained, then stopped: out of the pool, the VIP still served.
	e.cli(t, "kill", "1")
	if _, ok := e.members(t)[1]; ok {
		t.Errorf("INS 1 still in the pool after isolator kill")
	}
	e.load(t, e.clients4, "http://"+vip4+"/1k.bin", 200)
}

// wrk runs wrk against url with c connections for d from the wan namespace
// and fails the test for any socket error or non-2xx answer.
func (e *env) wrk(t *testing.T, url string, c int, d time.Duration) {
	t.Helper()
	out, err := e.tp.WAN.Run(context.Background(), "wrk", "-t2", "-c"+strconv.Itoa(c), "-d"+d.String(), url)
	if err != nil {
		t.Fatalf("wrk: %v", err)
	}
	if strings.Contains(out, "Socket errors") || strings.Contains(out, "Non-2xx") || !strings.Contains(out, "Requests/sec") {
		t.Errorf("wrk -c%d against %s reported errors:\n%s", c, url, out)
	}
	t.Logf("wrk -c%d: %s", c, strings.TrimSpace(out[strings.Index(out, "Requests/sec"):]))
}

// upCount is the number of INS up in the pool.
func (e *env) upCount(t *testing.T) int {
	t.Helper()
	n := 0
	for _, m := range e.members(t) {
		if m.State == "up" {
			n++
		}
	}
	return n
}

// TestAutoscale ramps a wrk load through the VIP: the autoscaler takes the
// pool from 2 INS to at least 4 on connections per INS, and back to 2 after
// the load stops, with no wrk error; its decisions, with their reasons, are
// in `isolator lb status`.
func TestAutoscale(t *testing.T) {
	harness.NeedFiles(t, "/usr/bin/wrk")
	// CPU is left out of it (cpu=4 is never reached on this machine): the
	// connections per INS decide.
	e := setup(t, 2, "--autoscale", "min=2,max=6,conns=20,cpu=4,sustain=1s,cooldown=2s,headroom=0.6,drain=5s")
	e.waitMembers(t, 10*time.Second, map[int]string{1: "up", 2: "up"})
	url := "http://" + vip4 + "/1k.bin"
	e.wrk(t, url, 16, 3*time.Second)
	if n := e.upCount(t); n != 2 {
		t.Errorf("%d INS up after 8 connections per INS, want 2", n)
	}
	peak := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.wrk(t, url, 60, 4*time.Second)
		e.wrk(t, url, 120, 10*time.Second)
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-time.After(200 * time.Millisecond):
		}
		peak = max(peak, e.upCount(t))
	}
	if peak < 4 {
		t.Fatalf("the pool grew to %d INS under 120 connections, want at least 4", peak)
	}
	deadline := time.Now().Add(90 * time.Second)
	for e.upCount(t) != 2 || len(e.members(t)) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not shrink back to 2 INS within 90 s of the load's end: %v", e.members(t))
		}
		time.Sleep(500 * time.Millisecond)
	}
	st := e.status(t)
	grew, shrank := 0, 0
	for _, d := range st.Decisions {
		t.Logf("decision %s %s %v: %s", d.At.Format("15:04:05.000"), d.Action, d.INS, d.Reason)
		if d.Reason == "" {
			t.Errorf("decision without a reason: %+v", d)
		}
		switch d.Action {
		case "grow":
			grew += len(d.INS)
		case "shrink":
			shrank += len(d.INS)
		}
	}
	if !strings.Contains(st.Autoscale, "min=2,max=6") || grew < 2 || shrank != grew {
		t.Errorf("lb status: autoscale %q, %d INS grown and %d shrunk, want at least 2 and as many", st.Autoscale, grew, shrank)
	}
	out := e.cli(t, "lb", "status")
	if !strings.Contains(out, "autoscale min=2,max=6") || !strings.Contains(out, "shrink") {
		t.Errorf("isolator lb status does not show the policy and the decisions:\n%s", out)
	}
	// The VIP is still served by what is left.
	e.load(t, e.clients4, url, 100)
}

// synFrame is a TCP SYN from src:sport to dst:80 in an Ethernet frame from
// srcMAC to dstMAC, with valid checksums.
func synFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, sport uint16) []byte {
	f := make([]byte, 14+20+20)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:34]
	ip[0], ip[3], ip[6], ip[8], ip[9] = 0x45, 40, 0x40, 64, 6
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:12], ^onesSum(0, ip))
	tcp := f[34:]
	binary.BigEndian.PutUint16(tcp[0:2], sport)
	binary.BigEndian.PutUint16(tcp[2:4], 80)
	binary.BigEndian.PutUint32(tcp[4:8], uint32(sport)*2654435761)
	tcp[12], tcp[13] = 5<<4, 0x02
	binary.BigEndian.PutUint16(tcp[14:16], 65535)
	pseudo := append(append(append([]byte{}, s4[:]...), d4[:]...), 0, 6, 0, 20)
	binary.BigEndian.PutUint16(tcp[16:18], ^onesSum(onesSum(0, pseudo), tcp))
	return f
}

// onesSum adds b to the one's complement sum s.
func onesSum(s uint16, b []byte) uint16 {
	sum := uint32(s)
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// TestSynFlood sends 150,000 SYNs from spoofed sources (10.200.0.0/16, each
// tuple once) to the VIP from the wan namespace while 30 long-lived
// connections keep making a request every 100 ms: none of them fails, the
// new-flow table stays within its bound and the flood does not reach the
// established table.
func TestSynFlood(t *testing.T) {
	e := setup(t, 3)
	e.waitMembers(t, 10*time.Second, map[int]string{1: "up", 2: "up", 3: "up"})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var conns []*conn
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	for i := range 30 {
		src := e.clients4[i%len(e.clients4)]
		nc, err := e.dialVIP(src, 5*time.Second)
		if err != nil {
			t.Fatalf("dial the VIP from %v: %v", src, err)
		}
		c := &conn{src: netip.MustParseAddrPort(nc.LocalAddr().String())}
		conns = append(conns, c)
		wg.Add(1)
		go func() { defer wg.Done(); c.run(nc, stop, 1024) }()
	}
	time.Sleep(time.Second)
	before := e.status(t).Uplinks[0]

	var dstMAC, srcMAC net.HardwareAddr
	if err := e.tp.GW.Do(func() error {
		ifc, err := net.InterfaceByName(e.tp.Uplinks[0].GWIf)
		if err == nil {
			dstMAC = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var fd, ifindex int
	if err := e.tp.WAN.Do(func() error {
		ifc, err := net.InterfaceByName(e.tp.Uplinks[0].WANIf)
		if err != nil {
			return err
		}
		ifindex, srcMAC = ifc.Index, ifc.HardwareAddr
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatalf("packet socket in the wan namespace: %v", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}
	vip := netip.MustParseAddr(vip4)
	const flood = 150000
	start := time.Now()
	for i := range flood {
		src := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8 & 0xff), byte(i)})
		f := synFrame(dstMAC, srcMAC, src, vip, uint16(1024+i/65536))
		for {
			err := unix.Sendto(fd, f, 0, to)
			if err == nil {
				break
			}
			if err != unix.ENOBUFS {
				t.Fatalf("send SYN %d: %v", i, err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.Logf("%d spoofed SYNs sent in %v", flood, time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	after := e.status(t).Uplinks[0]
	close(stop)
	wg.Wait()
	for _, c := range conns {
		if c.err != nil {
			t.Errorf("connection from %v failed during the flood after %d requests: %v", c.src, c.requests, c.err)
		}
	}
	t.Logf("flow tables: established %d -> %d, new %d -> %d", before.Established, after.Established, before.New, after.New)
	if after.New > 1<<16 {
		t.Errorf("new-flow table holds %d entries, bound %d", after.New, 1<<16)
	}
	if after.New < 1<<15 {
		t.Errorf("new-flow table holds %d entries after %d spoofed SYNs: did the flood reach the program?", after.New, flood)
	}
	if after.Established > before.Established+100 {
		t.Errorf("established table grew from %d to %d during a SYN flood", before.Established, after.Established)
	}
}
