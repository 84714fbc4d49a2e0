// Package survival runs Debian's nginx under libmpshim.so while the
// isolator's INS processes and the daemon itself die, are replaced or
// restarted, and drives it from the wan namespace with curl, wrk and plain
// TCP clients. Each test says what the app (nginx) and its clients see.
package survival

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// allowNginx admits nginx's master (root) and workers (www-data); the
// workers, which have dropped root by the time the daemon is restarted,
// reach the registration socket through its group.
var allowNginx = []string{"--allow-uid", "0", "--allow-uid", "33", "--socket-group", "www-data", "--socket-mode", "0660"}

// nginxOnTwo is the setup most tests here share: nginx under the shim
// (startNginx) on an isolator with 2 INS on one uplink, each INS serving
// 1k.bin once on its IPv4 address before the test goes on.
type nginxOnTwo struct {
	tp    *topo.Topology
	iso   *harness.Isolator
	s     *harness.Nginx
	infos []api.INSInfo // as `isolator ls` lists them
	urls  []string      // 1k.bin on infos[i]'s IPv4 address
	want  []byte        // 1k.bin
}

func startNginxOnTwo(t *testing.T) nginxOnTwo {
	t.Helper()
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: allowNginx})
	s := startNginx(t, tp, iso)
	infos, err := iso.List()
	if err != nil || len(infos) != 2 {
		t.Fatalf("isolator ls: %v %v", infos, err)
	}
	f := nginxOnTwo{tp: tp, iso: iso, s: s, infos: infos, want: s.Files["1k.bin"]}
	for _, in := range infos {
		f.urls = append(f.urls, "http://"+addr4(in)+"/1k.bin")
	}
	for _, u := range f.urls {
		harness.Fetch(t, tp.WAN, nil, u, f.want)
	}
	return f
}

// startNginx runs nginx (2 workers, listening on port 80 over IPv4 and
// IPv6) under the shim in the app namespace; its error log is at level
// info, so it names every connection a client closed.
func startNginx(t *testing.T, tp *topo.Topology, iso *harness.Isolator) *harness.Nginx {
	t.Helper()
	return harness.StartNginx(t, harness.NginxOptions{
		NS: tp.App, Shim: iso,
		Files: harness.RandomFiles(map[string]int{"1k.bin": 1 << 10}),
		Config: func(dir, root string) string {
			return fmt.Sprintf(`user www-data www-data;
worker_processes 2;
events { worker_connections 4096; }
http {
    log_format status '$status';
    access_log %[1]s/access.log status;
    keepalive_timeout 60;
    keepalive_requests 1000000;
    client_header_timeout 120s;
    server {
        listen 80;
        listen [::]:80;
        root %[2]s;
    }
}
`, dir, root)
		},
	})
}

// addr4 is INS in's first IPv4 address, without prefix length.
func addr4(in api.INSInfo) string { return strings.Split(in.Uplinks[0].Addr4, "/")[0] }

// insByID finds INS id in infos.
func insByID(infos []api.INSInfo, id int) (api.INSInfo, bool) {
	for _, in := range infos {
		if in.ID == id {
			return in, true
		}
	}
	return api.INSInfo{}, false
}

// curlOK fetches url from ns once and reports whether the body is want.
func curlOK(ns *topo.NS, url string, want []byte, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "curl", "-sS", "--max-time", fmt.Sprintf("%.1f", timeout.Seconds()), url).Output()
	return err == nil && bytes.Equal(out, want)
}

// neighMAC is the link-layer address ns has cached for addr ("" if none).
func neighMAC(t *testing.T, ns *topo.NS, addr string) string {
	out, err := ns.Run(context.Background(), "ip", "neigh", "show", addr)
	if err != nil {
		t.Fatalf("ip neigh show %s: %v", addr, err)
	}
	if m := regexp.MustCompile(`lladdr (\S+)`).FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return ""
}

// held is a client connection that has sent part of a request's headers:
// nginx holds it open, waiting for the rest.
type held struct {
	c net.Conn
	r *bufio.Reader
}

// hold opens n such connections to addr:80 from ns.
func hold(t *testing.T, ns *topo.NS, addr string, n int) []*held {
	t.Helper()
	var out []*held
	err := ns.Do(func() error {
		for range n {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "80"), 5*time.Second)
			if err != nil {
				return err
			}
			t.Cleanup(func() { c.Close() })
			if _, err := io.WriteString(c, "GET /1k.bin HTTP/1.1\r\nHost: survival\r\n"); err != nil {
				return err
			}
			out = append(out, &held{c: c, r: bufio.NewReader(c)})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("holding connections to %s: %v", addr, err)
	}
	return out
}

// finish completes h's request and checks that the response is the file.
func (h *held) finish(want []byte) error {
	h.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(h.c, "\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(h.r, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		return fmt.Errorf("status %d, %d bytes", resp.StatusCode, len(body))
	}
	return nil
}

// prematureCloses counts the connections nginx saw its client close
// before the request was complete: what the app sees of an INS that dies
// under the connections it delivered (their socketpairs hang up).
func prematureCloses(n *harness.Nginx) int {
	return strings.Count(n.ErrorLog(), "client prematurely closed connection")
}

// startWrk runs wrk from ns against url for d over conns connections.
func startWrk(t *testing.T, ns *topo.NS, url string, conns int, d time.Duration) *topo.Proc {
	t.Helper()
	p, err := ns.Start(context.Background(), "wrk", "-t", "2", "-c", strconv.Itoa(conns),
		"--timeout", "5s", "-d", fmt.Sprintf("%ds", int(d.Seconds())), url)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// wrkDone waits for wrk and parses its report.
func wrkDone(t *testing.T, p *topo.Proc) harness.WrkResult {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(2 * time.Minute):
		p.Stop()
		t.Fatalf("wrk did not end\n%s", p.Output())
	}
	r, err := harness.ParseWrk(p.Output())
	if err != nil {
		t.Fatalf("%v\n%s", err, p.Output())
	}
	return r
}

func samePIDs(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func needTools(t *testing.T) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl", "/usr/bin/wrk")
}

// TestINSReplaced kills one INS of two with SIGKILL while nginx serves
// through both.
//
// What the app sees: the connections the dead INS delivered hang up (nginx
// logs each as closed by its client); the connections of the other INS go
// on as if nothing happened; its listeners, its processes and its
// descriptors are never touched: the replacement INS delivers new
// connections on the same listening descriptors.
//
// What the clients see: those of the dead INS lose their connections; a
// wrk run against the other INS through the kill has no error at all; the
// dead INS's address answers again once the daemon replaced it (same id,
// same addresses, same MAC), to a client that still has the old MAC cached.
func TestINSReplaced(t *testing.T) {
	needTools(t)
	f := startNginxOnTwo(t)
	tp, iso, s, want := f.tp, f.iso, f.s, f.want
	victim, other := f.infos[0], f.infos[1]
	vURL, oURL := f.urls[0], f.urls[1]
	macBefore := neighMAC(t, tp.WAN, addr4(victim))
	master, workers := s.MasterPID(), s.Workers()

	const n = 16
	heldV, heldO := hold(t, tp.WAN, addr4(victim), n), hold(t, tp.WAN, addr4(other), n)
	closes0 := prematureCloses(s)
	w := startWrk(t, tp.WAN, oURL, 64, 6*time.Second)
	time.Sleep(1500 * time.Millisecond)

	killed := time.Now()
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var repl api.INSInfo
	for {
		if infos, err := iso.List(); err == nil {
			if in, ok := insByID(infos, victim.ID); ok && in.PID != victim.PID {
				repl = in
				break
			}
		}
		if time.Since(killed) > 15*time.Second {
			t.Fatalf("INS %d not replaced 15 s after SIGKILL\n%s", victim.ID, iso.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	replacedIn := time.Since(killed)
	// Its listeners are back without the app doing anything.
	for !curlOK(tp.WAN, vURL, want, time.Second) {
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("%s does not answer 20 s after the kill", vURL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	servedIn := time.Since(killed)
	t.Logf("INS %d (pid %d) killed: replaced by pid %d after %v; %s served again after %v",
		victim.ID, victim.PID, repl.PID, replacedIn.Round(time.Millisecond), vURL, servedIn.Round(time.Millisecond))

	if fmt.Sprint(repl.Uplinks[0].Addr4, repl.Uplinks[0].Addr6) != fmt.Sprint(victim.Uplinks[0].Addr4, victim.Uplinks[0].Addr6) {
		t.Errorf("replacement has %s %s, the dead INS had %s %s", repl.Uplinks[0].Addr4, repl.Uplinks[0].Addr6,
			victim.Uplinks[0].Addr4, victim.Uplinks[0].Addr6)
	}
	if repl.Restarts != 1 || !strings.Contains(repl.LastExit, "signal 9") {
		t.Errorf("isolator ls: restarts %d, last exit %q; want 1 and the SIGKILL", repl.Restarts, repl.LastExit)
	}
	if out, _ := iso.CLI("ls"); !strings.Contains(out, "RESTARTS") || !strings.Contains(out, "killed by signal 9") {
		t.Errorf("isolator ls shows no restart:\n%s", out)
	}
	// The client's cached MAC is still right: the same MAC came back.
	if after := neighMAC(t, tp.WAN, addr4(victim)); macBefore == "" || after != macBefore {
		t.Errorf("wan's neighbour entry for %s: %q before, %q after", addr4(victim), macBefore, after)
	}

	// The app saw exactly the dead INS's held connections end.
	deadline := time.Now().Add(10 * time.Second)
	for prematureCloses(s)-closes0 < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := prematureCloses(s) - closes0; got != n {
		t.Errorf("nginx saw %d connections end before their request, want the %d held on the dead INS", got, n)
	}
	for i, h := range heldO {
		if err := h.finish(want); err != nil {
			t.Errorf("held connection %d on the surviving INS: %v", i, err)
		}
	}
	for i, h := range heldV {
		if err := h.finish(want); err == nil {
			t.Errorf("held connection %d on the dead INS still answered", i)
		}
	}
	r := wrkDone(t, w)
	t.Logf("wrk -c 64 against the surviving INS through the kill: %d responses, %d socket errors, %d non-2xx",
		r.Requests, r.SocketErrors(), r.Non2xx)
	if r.SocketErrors() != 0 || r.Non2xx != 0 || r.Requests == 0 {
		t.Errorf("wrk against the surviving INS: %d socket errors, %d non-2xx, %d responses\n%s",
			r.SocketErrors(), r.Non2xx, r.Requests, r.Output)
	}
	if s.MasterPID() != master || !samePIDs(s.Workers(), workers) {
		t.Errorf("nginx processes changed: master %d workers %v, were %d %v", s.MasterPID(), s.Workers(), master, workers)
	}
}

// cpuTicks is the user+system CPU time of pids, in clock ticks.
func cpuTicks(pids []int) int {
	total := 0
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		if len(f) > 12 {
			u, _ := strconv.Atoi(f[11])
			st, _ := strconv.Atoi(f[12])
			total += u + st
		}
	}
	return total
}

// fileSize is the size of path (0 if missing).
func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// waitOutput waits until p's output has a line starting with prefix and
// returns it with the time it was seen (polled every 2 ms).
func waitOutput(t *testing.T, p *topo.Proc, prefix string, limit time.Duration) (string, time.Time) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		for _, l := range strings.Split(p.Output(), "\n") {
			if strings.HasPrefix(l, prefix) {
				return l, time.Now()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q from pid %d within %v; output:\n%s", prefix, p.PID(), limit, p.Output())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// serveAgain waits until every url answers with want and returns how long
// that took.
func serveAgain(t *testing.T, ns *topo.NS, urls []string, want []byte, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for _, u := range urls {
		for !curlOK(ns, u, want, time.Second) {
			if time.Since(start) > limit {
				t.Fatalf("%s not served %v after the restart", u, limit)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return time.Since(start)
}

// TestDaemonKilled kills the daemon with SIGKILL, under load and idle, and
// starts it again a second later, as an operator (or a binary upgrade)
// does.
//
// What the app sees: a call in flight when the daemon dies (a blocking
// connect) returns within the ring's poll period with ENETUNREACH, and so
// does every call made while no daemon runs, at once; its listeners are
// never readable without a connection (no accept loop, no CPU, no error
// log); once the daemon is back, the shim registers again by itself and
// makes its listeners again on the same descriptors: nginx is never
// restarted and serves again within about a second of the restart.
//
// What the clients see: the INS outlive the daemon and the restarted one
// adopts them (TestDaemonRestartAdopts checks that no connection is lost);
// here new connections are served once the daemon is back.
func TestDaemonKilled(t *testing.T) {
	needTools(t)
	f := startNginxOnTwo(t)
	tp, iso, s, urls, want := f.tp, f.iso, f.s, f.urls, f.want
	master, workers := s.MasterPID(), s.Workers()
	errLog := filepath.Join(s.Dir, "error.log")
	gap := harness.BuildC(t, "testdata/gapcall.c")
	env := append(os.Environ(), "LD_PRELOAD="+harness.Binary(t, "libmpshim.so"), "MPSHIM_SOCKET="+iso.Socket)

	// Under load: wrk on the first INS, a blocking connect in flight
	// (192.0.2.1 is routed to the wan end, which drops it: the SYN is
	// never answered).
	w := startWrk(t, tp.WAN, urls[0], 64, 5*time.Second)
	time.Sleep(1500 * time.Millisecond)
	p, err := tp.App.StartEnv(context.Background(), env, gap, "connect", "192.0.2.1", "80")
	if err != nil {
		t.Fatal(err)
	}
	waitOutput(t, p, "waiting", 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	iso.Kill(t)
	line, at := waitOutput(t, p, "returned", 10*time.Second)
	inFlight := at.Sub(killed)
	t.Logf("daemon killed: the connect in flight returned after %v: %s", inFlight.Round(time.Millisecond), line)
	if !strings.Contains(line, "errno=ENETUNREACH") || inFlight > time.Second {
		t.Errorf("call in flight at the daemon's death: %q after %v, want ENETUNREACH within the poll period", line, inFlight)
	}
	for range 3 {
		line, _ := waitOutput(t, p, "again", 5*time.Second)
		ms := 0
		fmt.Sscanf(line[strings.Index(line, "ms=")+3:], "%d", &ms)
		if !strings.Contains(line, "errno=ENETUNREACH") || ms > 100 {
			t.Errorf("call while no daemon runs: %q, want ENETUNREACH within 100 ms", line)
		}
	}
	t.Logf("calls while no daemon runs: %s", strings.ReplaceAll(strings.TrimSpace(p.Output()), "\n", "; "))
	time.Sleep(time.Until(killed.Add(time.Second)))
	iso.Restart(t)
	restarted := time.Now()
	back := serveAgain(t, tp.WAN, urls, want, 30*time.Second)
	t.Logf("daemon restarted 1 s after the kill: every address served again %v after the restart", back.Round(time.Millisecond))
	r := wrkDone(t, w)
	t.Logf("wrk -c 64 through the kill: %d responses, %d socket errors", r.Requests, r.SocketErrors())
	_ = restarted
	// After the restart nginx serves as before: no error, whatever the
	// calls it makes on the sockets of the dead session (closes of its
	// dead connections name ids no INS of the new daemon hands out).
	for _, u := range urls {
		r := wrkDone(t, startWrk(t, tp.WAN, u, 64, 4*time.Second))
		t.Logf("wrk -c 64 after the restart against %s: %d responses, %d socket errors, %d non-2xx", u, r.Requests, r.SocketErrors(), r.Non2xx)
		if r.SocketErrors() != 0 || r.Non2xx != 0 || r.Requests == 0 {
			t.Errorf("wrk after the restart against %s: %d socket errors, %d non-2xx, %d responses\n%s", u, r.SocketErrors(), r.Non2xx, r.Requests, r.Output)
		}
	}

	// Idle: no spin, no log.
	time.Sleep(500 * time.Millisecond)
	cpu0, log0 := cpuTicks(s.Workers()), fileSize(errLog)
	iso.Kill(t)
	time.Sleep(2 * time.Second)
	cpu1, log1 := cpuTicks(s.Workers()), fileSize(errLog)
	t.Logf("idle nginx with no daemon for 2 s: workers used %d ticks of CPU, error log grew %d bytes", cpu1-cpu0, log1-log0)
	if cpu1-cpu0 > 20 || log1-log0 > 4096 {
		t.Errorf("idle nginx while no daemon runs: %d CPU ticks in 2 s, error log +%d bytes (want ~0: no accept loop)",
			cpu1-cpu0, log1-log0)
	}
	iso.Restart(t)
	back = serveAgain(t, tp.WAN, urls, want, 30*time.Second)
	t.Logf("idle: served again %v after the restart", back.Round(time.Millisecond))
	if b, _ := os.ReadFile(errLog); bytes.Contains(b, []byte("accept4() failed")) {
		t.Errorf("nginx logged failed accepts:\n%s", b)
	}
	if s.MasterPID() != master || !samePIDs(s.Workers(), workers) {
		t.Errorf("nginx processes changed: master %d workers %v, were %d %v", s.MasterPID(), s.Workers(), master, workers)
	}
}

// TestAddressConflict gives the daemon a pool whose first addresses a host
// on the link (the wan end) already uses, over IPv4 and IPv6.
//
// What the INS does: it probes each pool address before use (ARP probe,
// DAD), skips the taken ones with a warning that names the MAC that
// answered, and takes the next free one. What the clients see: the host
// that owns the address keeps it (no INS answers ARP for it); the INS is
// reachable on the next address.
func TestAddressConflict(t *testing.T) {
	needTools(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	u := tp.Uplinks[0]
	taken4, taken6 := u.HostAddr4(0), u.HostAddr6(0)
	if _, err := tp.WAN.Run(context.Background(), "ip", "addr", "add", taken4.String()+"/32", "dev", u.WANIf); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.WAN.Run(context.Background(), "ip", "addr", "add", taken6.String()+"/128", "dev", u.WANIf, "nodad"); err != nil {
		t.Fatal(err)
	}
	out, err := tp.WAN.Run(context.Background(), "cat", "/sys/class/net/"+u.WANIf+"/address")
	if err != nil {
		t.Fatal(err)
	}
	wanMAC := strings.TrimSpace(out)
	since := time.Now()
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	infos, err := iso.List()
	if err != nil || len(infos) != 1 {
		t.Fatalf("isolator ls: %v %v", infos, err)
	}
	got4, got6 := strings.Split(infos[0].Uplinks[0].Addr4, "/")[0], strings.Split(infos[0].Uplinks[0].Addr6, "/")[0]
	if got4 != u.HostAddr4(1).String() || got6 != u.HostAddr6(1).String() {
		t.Errorf("INS took %s and %s; want the next free ones %s and %s", got4, got6, u.HostAddr4(1), u.HostAddr6(1))
	}
	for _, a := range []string{taken4.String(), taken6.String()} {
		line, _, ok := iso.WaitLog(since, 5*time.Second, "in use on the link", "addr="+a, "mac="+wanMAC)
		if !ok {
			t.Errorf("no warning naming %s and the MAC %s that answered for it:\n%s", a, wanMAC, iso.Log())
		}
		t.Logf("%s", line)
	}
	// The INS answers on its address; the owner of the taken one still
	// has it to itself.
	if _, err := tp.WAN.Run(context.Background(), "ping", "-c", "1", "-W", "2", got4); err != nil {
		t.Errorf("ping %s (the INS): %v", got4, err)
	}
}

// TestINSStop stops INS the orderly way: `isolator kill ID` and the
// daemon's own SIGTERM. Each INS exits on its SIGTERM at once with status
// 0 (no SIGKILL after the grace period), an INS stopped on purpose is not
// replaced, and no INS process is left.
//
// What the app would see: no new connection on the stopped INS, its open
// connections drained (TestINSDrain).
func TestINSStop(t *testing.T) {
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 3})
	infos, err := iso.List()
	if err != nil || len(infos) != 3 {
		t.Fatalf("isolator ls: %v %v", infos, err)
	}
	since := time.Now()
	if out, err := iso.CLI("kill", strconv.Itoa(infos[0].ID)); err != nil {
		t.Fatalf("isolator kill: %v\n%s", err, out)
	}
	line, at, ok := iso.WaitLog(since, 5*time.Second, "INS stopped", fmt.Sprintf("ins=%d ", infos[0].ID))
	if !ok || !strings.Contains(line, "status=exited") || at.Sub(since) > 2*time.Second {
		t.Errorf("isolator kill %d: %q after %v; want a clean exit on SIGTERM within the 2 s grace", infos[0].ID, line, at.Sub(since))
	}
	time.Sleep(time.Second)
	if after, _ := iso.List(); len(after) != 2 {
		t.Errorf("after isolator kill: %d INS, want 2 (a stopped INS is not replaced)", len(after))
	}
	since = time.Now()
	iso.Stop(t)
	for _, in := range infos[1:] {
		line, _, ok := iso.WaitLog(since, time.Second, "INS stopped", fmt.Sprintf("ins=%d ", in.ID))
		if !ok || !strings.Contains(line, "status=exited") {
			t.Errorf("daemon stop: INS %d: %q, want a clean exit on SIGTERM", in.ID, line)
		}
		if syscall.Kill(in.PID, 0) == nil {
			t.Errorf("INS pid %d outlived the daemon", in.PID)
		}
	}
	t.Logf("daemon stopped in %v", time.Since(since).Round(time.Millisecond))
}
