package main

import (
	"github.com/mpshim/mpshim/internal/procstat"

	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/bench/internal/report"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/test/topo"
)

// Ports and addresses of the servers. The native side lives at
// nativeAddr on uplink 0; the INS sides at the INS's address.
const (
	nginxPort        = 80
	netstackHTTPPort = 8080
	iperfPort        = 5201
	netstackIperf    = 5202
	pprofAddr        = "127.0.0.1:6060"
	fileName         = "1k.bin"
)

// nativeAddr is the kernel address of the native side: uplink 0's subnet,
// outside the INS pool (.10 and up) and the wan's extra sources (.2-.9).
var nativeAddr = netip.MustParseAddr("10.77.0.200")

// env is everything a run set up.
type env struct {
	o        options
	tp       *topo.Topology
	native   *topo.NS
	dir      string // world-readable scratch directory
	www      string
	self     string // this binary
	isoBin   string
	lib      string
	file     []byte // the 1 KiB file served
	iso      *isolator
	natNginx *nginx
	shmNginx *nginx
	procs    []*topo.Proc // servers to stop before the isolator
	netstack *topo.Proc
	notes    []string // anomalies the results file reports

	sourcesAdded bool
	noFile       uint64 // hard RLIMIT_NOFILE
	workers      int    // nginx worker processes
	iperfPID     map[string]int
}

// note records an anomaly for the results file and logs it.
func (e *env) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	slog.Warn(s)
	e.notes = append(e.notes, s)
}

func setup(ctx context.Context, o options) (*env, error) {
	e := &env{o: o, workers: 2, iperfPID: map[string]int{}}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return nil, fmt.Errorf("getrlimit: %w", err)
	}
	e.noFile = rl.Max
	var err error
	if e.self, err = os.Executable(); err != nil {
		return nil, fmt.Errorf("own executable: %w", err)
	}
	bin := absPath(o.bin)
	e.isoBin, e.lib = filepath.Join(bin, "isolator"), filepath.Join(bin, "libmpshim.so")
	for _, p := range []string{e.isoBin, e.lib, "/usr/sbin/nginx", "/usr/bin/wrk", "/usr/bin/ab", "/usr/bin/iperf3", "/usr/bin/curl"} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s missing (make bench builds and installs everything): %w", p, err)
		}
	}
	if e.dir, err = os.MkdirTemp("", "mpbench-"); err != nil {
		return nil, err
	}
	// nginx workers (www-data) read the files.
	_ = os.Chmod(e.dir, 0o755)
	e.www = filepath.Join(e.dir, "www")
	if err := os.MkdirAll(e.www, 0o755); err != nil {
		return nil, err
	}
	e.file = make([]byte, 1<<10)
	_, _ = rand.Read(e.file)
	if err := os.WriteFile(filepath.Join(e.www, fileName), e.file, 0o644); err != nil {
		return nil, err
	}
	slog.Info("building the topology: wan, gw, app and one veth uplink")
	if e.tp, err = topo.Build(ctx, topo.Config{Uplinks: 1, NoIPv6: true}); err != nil {
		return nil, err
	}
	if err := e.buildNative(ctx); err != nil {
		return e, err
	}
	// The wan opens many connections: every port, and TIME_WAIT reuse.
	for k, v := range map[string]string{"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": "1"} {
		if err := e.tp.WAN.SetSysctl(k, v); err != nil {
			return e, err
		}
	}
	return e, nil
}

// buildNative makes the native side's namespace: a macvlan child of the gw
// end of uplink 0, like every INS's NIC, with a kernel address.
func (e *env) buildNative(ctx context.Context) error {
	var err error
	if e.native, err = e.tp.NewNS("native"); err != nil {
		return err
	}
	up := e.tp.Uplinks[0]
	for _, args := range [][]string{
		{"-n", e.tp.GW.Name, "link", "add", "nat0", "link", up.GWIf, "type", "macvlan", "mode", "bridge"},
		{"-n", e.tp.GW.Name, "link", "set", "nat0", "netns", e.native.Name},
		{"-n", e.native.Name, "addr", "add", nativeAddr.String() + "/24", "dev", "nat0"},
		{"-n", e.native.Name, "link", "set", "nat0", "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func (e *env) close() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		_ = e.procs[i].Stop()
	}
	for _, n := range []*nginx{e.shmNginx, e.natNginx} {
		if n != nil {
			n.stop()
		}
	}
	if e.iso != nil {
		e.iso.stop()
	}
	if e.tp != nil {
		if err := e.tp.Close(); err != nil {
			slog.Warn("topology teardown", "err", err)
		}
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

// isolator is a running daemon.
type isolator struct {
	proc     *topo.Proc
	bin, api string
	socket   string
	ins      []api.INSInfo
}

// startIsolator runs `isolator run` in gw with n INS on uplink 0 and waits
// until all of them answer.
func (e *env) startIsolator(ctx context.Context, n int) error {
	d := &isolator{bin: e.isoBin, api: filepath.Join(e.dir, "api.sock"), socket: filepath.Join(e.dir, "isolator.sock")}
	up := e.tp.Uplinks[0]
	args := []string{"run", "--api", d.api, "--socket", d.socket, "--ins", strconv.Itoa(n), "--max-ins", "32",
		"--allow-uid", "0", "--allow-uid", "33", "--allow-uid", "65534",
		"--uplink", fmt.Sprintf("up0=%s,pool4=%s/24,gw4=%s", up.GWIf, up.HostAddr4(0), up.WANAddr4),
		"--pprof", pprofAddr}
	p, err := e.tp.GW.Start(ctx, e.isoBin, args...)
	if err != nil {
		return err
	}
	d.proc = p
	e.iso = d
	deadline := time.Now().Add(2 * time.Minute)
	for {
		infos, err := d.list()
		if err == nil && len(infos) == n {
			d.ins = infos
			break
		}
		select {
		case <-p.Done():
			return fmt.Errorf("isolator exited: %s", tail(p.Output(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("isolator did not bring up %d INS in 2 min: %s", n, tail(p.Output(), 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	slog.Info("isolator running", "pid", p.PID(), "ins", n)
	return nil
}

func (d *isolator) list() ([]api.INSInfo, error) {
	out, err := exec.Command(d.bin, "--api", d.api, "ls", "-o", "json").Output()
	if err != nil {
		return nil, fmt.Errorf("isolator ls: %w", err)
	}
	var infos []api.INSInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("isolator ls -o json: %w", err)
	}
	return infos, nil
}

// insAddrs returns the IPv4 address of every INS on uplink 0.
func (d *isolator) insAddrs() []netip.Addr {
	var out []netip.Addr
	for _, in := range d.ins {
		if len(in.Uplinks) > 0 {
			if p, err := netip.ParsePrefix(in.Uplinks[0].Addr4); err == nil {
				out = append(out, p.Addr())
			}
		}
	}
	return out
}

func (d *isolator) stop() {
	if d.proc != nil {
		_ = d.proc.Stop()
	}
}

// stopApps stops the servers registered with the isolator, then the
// isolator.
func (e *env) stopApps() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		_ = e.procs[i].Stop()
	}
	e.procs = nil
	e.netstack = nil
	if e.shmNginx != nil {
		e.shmNginx.stop()
		e.shmNginx = nil
	}
}

// shimEnv is the environment of a program under the shim.
func (e *env) shimEnv() []string {
	return append(os.Environ(), "LD_PRELOAD="+e.lib, "MPSHIM_SOCKET="+e.iso.socket)
}

// nginx is one nginx master with its workers.
type nginx struct {
	ns   *topo.NS
	dir  string
	conf string
	env  []string
}

// startNginx starts nginx in ns (under the shim when shim is set) with the
// configuration both sides share.
func (e *env) startNginx(ctx context.Context, ns *topo.NS, name string, shim bool) (*nginx, error) {
	n := &nginx{ns: ns, dir: filepath.Join(e.dir, name)}
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return nil, err
	}
	n.conf = filepath.Join(n.dir, "nginx.conf")
	// Each worker may hold as many connections as descriptors.
	conns := max(1024, e.fdCap())
	conf := fmt.Sprintf(`daemon on;
worker_processes %[6]d;
worker_rlimit_nofile %[4]d;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections %[3]d; }
http {
    access_log off;
    sendfile on;
    keepalive_timeout 600;
    keepalive_requests 10000000;
    client_header_timeout 600s;
    server {
        listen %[5]d backlog=4096;
        root %[2]s;
    }
}
`, n.dir, e.www, conns, conns+1024, nginxPort, e.workers)
	if err := os.WriteFile(n.conf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	n.env = os.Environ()
	if shim {
		n.env = e.shimEnv()
	}
	if out, err := n.cmd(ctx, "-e", filepath.Join(n.dir, "error.log")); err != nil {
		return nil, fmt.Errorf("nginx in %s: %w: %s %s", ns.Name, err, out, n.errorLog())
	}
	return n, nil
}

func (n *nginx) cmd(ctx context.Context, args ...string) (string, error) {
	c := n.ns.Command(ctx, "/usr/sbin/nginx", append([]string{"-c", n.conf}, args...)...)
	c.Env = n.env
	out, err := c.CombinedOutput()
	return string(out), err
}

func (n *nginx) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "error.log"))
	return tail(string(b), 2000)
}

func (n *nginx) master() int {
	b, err := os.ReadFile(filepath.Join(n.dir, "nginx.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// workers lists the master's children.
func (n *nginx) workers() []int { return children(n.master()) }

func (n *nginx) stop() {
	pid := n.master()
	_, _ = n.cmd(context.Background(), "-s", "quit")
	for deadline := time.Now().Add(10 * time.Second); pid > 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	if pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for _, w := range children(pid) {
			_ = syscall.Kill(w, syscall.SIGKILL)
		}
	}
}

// children lists the child processes of pid.
func children(pid int) []int {
	if pid <= 0 {
		return nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if c, err := strconv.Atoi(f); err == nil {
			out = append(out, c)
		}
	}
	return out
}

var rssRE = regexp.MustCompile(`VmRSS:\s+(\d+) kB`)

// rss returns the resident set of pid in bytes (0 if it is gone).
func rss(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	m := rssRE.FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return v << 10
}

// startServers starts every side's servers: native nginx and iperf3 on
// the kernel, nginx and iperf3 under the shim, and the netstack helper.
func (e *env) startServers(ctx context.Context, native bool) error {
	var err error
	if native {
		if e.natNginx, err = e.startNginx(ctx, e.native, "native", false); err != nil {
			return err
		}
		p, err := e.native.Start(ctx, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
		if err != nil {
			return err
		}
		e.procs = append(e.procs, p)
		e.iperfPID[report.Native] = p.PID()
	}
	if e.shmNginx, err = e.startNginx(ctx, e.tp.App, "mpshim", true); err != nil {
		return err
	}
	if err := e.startShim(ctx, "iperf3", "-s", "-p", strconv.Itoa(iperfPort)); err != nil {
		return err
	}
	e.iperfPID[report.MPShim] = e.procs[len(e.procs)-1].PID()
	p, err := e.startShimless(ctx, e.self, "netstack", "--http", fmt.Sprintf(":%d", netstackHTTPPort),
		"--iperf", fmt.Sprintf(":%d", netstackIperf), "--root", e.www)
	if err != nil {
		return err
	}
	e.netstack = p
	e.iperfPID[report.Netstack] = p.PID()
	if _, err := waitOutput(p.Output, p.Done(), readyLine, 30*time.Second); err != nil {
		return fmt.Errorf("netstack server: %w", err)
	}
	// iperf3 servers listen shortly after starting.
	time.Sleep(500 * time.Millisecond)
	return e.checkServed(ctx)
}

// startShim starts a program under the shim in app.
func (e *env) startShim(ctx context.Context, name string, args ...string) error {
	return e.startApp(ctx, e.shimEnv(), name, args...)
}

// startShimless starts a Go program in app that reaches the isolator
// through mpnet (it finds the socket in MPSHIM_SOCKET).
func (e *env) startShimless(ctx context.Context, name string, args ...string) (*topo.Proc, error) {
	if err := e.startApp(ctx, append(os.Environ(), "MPSHIM_SOCKET="+e.iso.socket), name, args...); err != nil {
		return nil, err
	}
	return e.procs[len(e.procs)-1], nil
}

func (e *env) startApp(ctx context.Context, env []string, name string, args ...string) error {
	p, err := e.tp.App.StartEnv(ctx, env, name, args...)
	if err != nil {
		return err
	}
	e.procs = append(e.procs, p)
	return nil
}

// target is where one side serves.
type target struct {
	side      string
	addr      netip.Addr
	httpPort  int
	iperfPort int
}

func (t target) url() string { return fmt.Sprintf("http://%s:%d/%s", t.addr, t.httpPort, fileName) }

func (e *env) targets() map[string]target {
	ins := e.iso.insAddrs()[0]
	return map[string]target{
		"native":   {side: "native", addr: nativeAddr, httpPort: nginxPort, iperfPort: iperfPort},
		"netstack": {side: "netstack", addr: ins, httpPort: netstackHTTPPort, iperfPort: netstackIperf},
		"mpshim":   {side: "mpshim", addr: ins, httpPort: nginxPort, iperfPort: iperfPort},
	}
}

// checkServed fetches the file from every side with curl in wan and
// compares it byte for byte.
func (e *env) checkServed(ctx context.Context) error {
	var errs []error
	for _, t := range e.targets() {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		out, err := e.tp.WAN.Command(cctx, "curl", "-sS", "--fail", "--max-time", "10", t.url()).Output()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: curl %s: %w", t.side, t.url(), err))
		} else if string(out) != string(e.file) {
			errs = append(errs, fmt.Errorf("%s: %s returned %d bytes, not the file", t.side, t.url(), len(out)))
		}
	}
	return errors.Join(errs...)
}

// restartNginx restarts both nginx with e.workers workers.
func (e *env) restartNginx(ctx context.Context) error {
	var err error
	if e.natNginx != nil {
		e.natNginx.stop()
		if e.natNginx, err = e.startNginx(ctx, e.native, "native", false); err != nil {
			return err
		}
	}
	if e.shmNginx != nil {
		e.shmNginx.stop()
		if e.shmNginx, err = e.startNginx(ctx, e.tp.App, "mpshim", true); err != nil {
			return err
		}
	}
	time.Sleep(300 * time.Millisecond)
	return e.checkServed(ctx)
}

// cpuTime returns the user and system CPU time pid has used (all its
// threads), or 0 if it is gone.
func cpuTime(pid int) time.Duration {
	t, _ := procstat.CPUTime(pid)
	return t
}

// serverPIDs are the processes that serve side's HTTP (http) or iperf3
// tests.
func (e *env) serverPIDs(side string, http bool) []int {
	if !http {
		return []int{e.iperfPID[side]}
	}
	switch side {
	case report.Native:
		return e.natNginx.workers()
	case report.MPShim:
		return e.shmNginx.workers()
	default:
		return []int{e.netstack.PID()}
	}
}

// cpuMeter measures the CPU the INS and a side's server use during a run,
// and the frames the INS send and receive.
type cpuMeter struct {
	e           *env
	ins, server []int
	i0, s0      time.Duration
	tx0, rx0    uint64
}

func (e *env) startCPU(side string, http bool) *cpuMeter {
	m := &cpuMeter{e: e, server: e.serverPIDs(side, http)}
	if side != report.Native {
		for _, in := range e.iso.ins {
			m.ins = append(m.ins, in.PID)
		}
		m.tx0, m.rx0 = e.iso.frames()
	}
	m.i0, m.s0 = sumCPU(m.ins), sumCPU(m.server)
	return m
}

// stop returns the CPU used by the INS and by the server since start.
func (m *cpuMeter) stop() (ins, server time.Duration) {
	return sumCPU(m.ins) - m.i0, sumCPU(m.server) - m.s0
}

// frames returns the frames the INS sent and received since start.
func (m *cpuMeter) frames() (tx, rx uint64) {
	if len(m.ins) == 0 {
		return 0, 0
	}
	tx, rx = m.e.iso.frames()
	return tx - m.tx0, rx - m.rx0
}

// frames sums the frames every INS sent and received on its uplinks.
func (d *isolator) frames() (tx, rx uint64) {
	infos, err := d.list()
	if err != nil {
		return 0, 0
	}
	for _, in := range infos {
		for _, u := range in.Uplinks {
			tx += u.TxPackets
			rx += u.RxPackets
		}
	}
	return tx, rx
}

func sumCPU(pids []int) time.Duration {
	var t time.Duration
	for _, p := range pids {
		t += cpuTime(p)
	}
	return t
}
