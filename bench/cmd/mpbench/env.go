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
	"slices"
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
	redisPort        = 6379
	memcachedPort    = 11211
	udpEchoPort      = 7777
	pprofAddr        = "127.0.0.1:6060"
	fileName         = "1k.bin"
)

// nativeAddr and runscAddr are the kernel addresses of the native and the
// runsc side: uplink 0's subnet, outside the INS pool (.10 and up) and the
// wan's extra sources (.2-.9).
var (
	nativeAddr = netip.MustParseAddr("10.77.0.200")
	runscAddr  = netip.MustParseAddr("10.77.0.201")
)

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
	echoBin  string
	runscBin string
	natNginx *nginx
	shmNginx *nginx
	procs    []*topo.Proc // servers to stop before the isolator
	netstack *topo.Proc
	runsc    *runscBox
	sides    []string // the sides measured, in table order
	notes    []string // anomalies the results file reports
	pinning  string   // how the sides were pinned to CPUs, as checked

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
	e := &env{o: o, workers: 1, iperfPID: map[string]int{}}
	for _, side := range report.Sides {
		if side == report.Native || side == report.MPShim || o.peer(side) {
			e.sides = append(e.sides, side)
		}
	}
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
	e.echoBin = filepath.Join(bin, "udpecho")
	need := []string{e.isoBin, e.lib, "/usr/sbin/nginx", "/usr/bin/wrk", "/usr/bin/ab", "/usr/bin/iperf3", "/usr/bin/curl"}
	if o.phase("small") {
		need = append(need, e.echoBin, "/usr/bin/redis-server", "/usr/bin/redis-benchmark", "/usr/bin/memcached", "/usr/bin/memcaslap")
	}
	if o.peer(report.Runsc) {
		e.runscBin = absPath(o.runsc)
		need = append(need, e.runscBin)
	}
	for _, p := range need {
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
	if e.tp, err = topo.Build(ctx, topo.Config{Uplinks: 1, NoIPv6: true, Direct: true}); err != nil {
		return nil, err
	}
	if e.native, err = e.buildKernelSide(ctx, "native", "nat0", nativeAddr); err != nil {
		return e, err
	}
	if o.peer(report.Runsc) {
		ns, err := e.buildKernelSide(ctx, "runsc", "rsc0", runscAddr)
		if err != nil {
			return e, err
		}
		e.runsc = &runscBox{ns: ns}
	}
	// The wan opens many connections: every port, and TIME_WAIT reuse.
	for k, v := range map[string]string{"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": "1"} {
		if err := e.tp.WAN.SetSysctl(k, v); err != nil {
			return e, err
		}
	}
	return e, nil
}

// buildKernelSide makes the namespace of a side with a kernel interface
// (native, runsc): a macvlan child dev of the gw end of uplink 0, like
// every INS's NIC, with the address addr.
func (e *env) buildKernelSide(ctx context.Context, name, dev string, addr netip.Addr) (*topo.NS, error) {
	ns, err := e.tp.NewNS(name)
	if err != nil {
		return nil, err
	}
	up := e.tp.Uplinks[0]
	for _, args := range [][]string{
		{"-n", e.tp.GW.Name, "link", "add", dev, "link", up.GWIf, "type", "macvlan", "mode", "bridge"},
		{"-n", e.tp.GW.Name, "link", "set", dev, "netns", ns.Name},
		{"-n", ns.Name, "addr", "add", addr.String() + "/24", "dev", dev},
		{"-n", ns.Name, "link", "set", dev, "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return ns, nil
}

// server returns the command line that runs name on the server CPU.
func (e *env) server(name string, args ...string) (string, []string) {
	return pin(e.o.serverCPU, name, args...)
}

// client returns the command line that runs name on the client CPU.
func (e *env) client(name string, args ...string) (string, []string) {
	return pin(e.o.clientCPU, name, args...)
}

// pin prefixes a command line with taskset -c cpu (none for cpu "").
func pin(cpu, name string, args ...string) (string, []string) {
	if cpu == "" {
		return name, args
	}
	return "taskset", append([]string{"-c", cpu, name}, args...)
}

func (e *env) close() {
	if e.runsc != nil {
		e.runsc.stop()
	}
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
	name, args := e.server(e.isoBin, args...)
	p, err := e.tp.GW.Start(ctx, name, args...)
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
	cpu  string // the CPU it runs on ("": any)
}

// startNginx starts nginx in ns (under the shim when shim is set) with the
// configuration every side shares.
func (e *env) startNginx(ctx context.Context, ns *topo.NS, name string, shim bool) (*nginx, error) {
	n, err := e.writeNginx(ns, name)
	if err != nil {
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

// writeNginx writes the configuration of the nginx called name into its
// directory.
func (e *env) writeNginx(ns *topo.NS, name string) (*nginx, error) {
	n := &nginx{ns: ns, dir: filepath.Join(e.dir, name), cpu: e.o.serverCPU}
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
	return n, nil
}

func (n *nginx) cmd(ctx context.Context, args ...string) (string, error) {
	name, args := pin(n.cpu, "/usr/sbin/nginx", append([]string{"-c", n.conf}, args...)...)
	c := n.ns.Command(ctx, name, args...)
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

// smallServers are the small-message servers every side runs besides
// nginx and iperf3 when the run measures them: redis, memcached (one
// worker thread, as the server has one CPU) and the UDP echo. dir holds
// redis's working directory.
func (e *env) smallServers(dir string) [][]string {
	if !e.o.phase("small") {
		return nil
	}
	return [][]string{
		{"/usr/bin/redis-server", "--port", strconv.Itoa(redisPort), "--bind", "0.0.0.0", "--protected-mode", "no",
			"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", ""},
		{"/usr/bin/memcached", "-u", "root", "-p", strconv.Itoa(memcachedPort), "-U", "0", "-t", "1", "-c", "4096"},
		{e.echoBin, strconv.Itoa(udpEchoPort)},
	}
}

// startServers starts every side's servers: on the kernel (native) and in
// runsc when native is set, under the shim, and the netstack helper when
// it is a side. Each side serves the same nginx, iperf3 and small-message
// servers, pinned to the server CPU.
func (e *env) startServers(ctx context.Context, native bool) error {
	var err error
	if native {
		if e.natNginx, err = e.startNginx(ctx, e.native, "native", false); err != nil {
			return err
		}
		name, args := e.server("iperf3", "-s", "-p", strconv.Itoa(iperfPort))
		p, err := e.native.Start(ctx, name, args...)
		if err != nil {
			return err
		}
		e.procs = append(e.procs, p)
		e.iperfPID[report.Native] = p.PID()
		dir := filepath.Join(e.dir, "native-redis")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, c := range e.smallServers(dir) {
			name, args := e.server(c[0], c[1:]...)
			p, err := e.native.Start(ctx, name, args...)
			if err != nil {
				return err
			}
			e.procs = append(e.procs, p)
		}
		if e.runsc != nil {
			if err := e.startRunsc(ctx); err != nil {
				return fmt.Errorf("runsc: %w", err)
			}
		}
	}
	if e.shmNginx, err = e.startNginx(ctx, e.tp.App, "mpshim", true); err != nil {
		return err
	}
	if err := e.startShim(ctx, "iperf3", "-s", "-p", strconv.Itoa(iperfPort)); err != nil {
		return err
	}
	e.iperfPID[report.MPShim] = e.procs[len(e.procs)-1].PID()
	dir := filepath.Join(e.dir, "mpshim-redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, c := range e.smallServers(dir) {
		if err := e.startShim(ctx, c[0], c[1:]...); err != nil {
			return err
		}
	}
	if e.o.peer(report.Netstack) {
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
	}
	// iperf3, redis and memcached listen shortly after starting.
	time.Sleep(time.Second)
	if err := e.checkServed(ctx); err != nil {
		return err
	}
	e.pinning = e.describePinning()
	return nil
}

// describePinning says where the sides run, from the CPU affinity of their
// processes as the kernel reports it.
func (e *env) describePinning() string {
	if e.o.serverCPU == "" && e.o.clientCPU == "" {
		return "no CPU pinning"
	}
	var parts []string
	for _, side := range e.sides {
		var pids []int
		for _, ns := range e.sideNS(side) {
			pids = append(pids, nsPIDs(ns)...)
		}
		if side != report.Native && side != report.Runsc {
			for _, in := range e.iso.ins {
				pids = append(pids, in.PID)
			}
		}
		sets := map[string]int{}
		for _, pid := range pids {
			sets[affinity(pid)]++
		}
		var ss []string
		for set, n := range sets {
			ss = append(ss, fmt.Sprintf("%d on CPU %s", n, set))
		}
		slices.Sort(ss)
		parts = append(parts, fmt.Sprintf("%s: %s", side, strings.Join(ss, ", ")))
	}
	return fmt.Sprintf("servers pinned with `taskset -c %s` (processes per side, INS included: %s); clients (wrk, ab, iperf3, redis-benchmark, memaslap, the UDP pinger, the connection holder) with `taskset -c %s`",
		e.o.serverCPU, strings.Join(parts, "; "), e.o.clientCPU)
}

var cpusRE = regexp.MustCompile(`(?m)^Cpus_allowed_list:\s+(\S+)`)

// affinity returns the CPUs pid may run on ("?" if unknown).
func affinity(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	if m := cpusRE.FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return "?"
}

// sideNS returns the namespaces whose processes serve side.
func (e *env) sideNS(side string) []string {
	switch side {
	case report.Native:
		return []string{e.native.Path()}
	case report.Runsc:
		return []string{e.runsc.ns.Path()}
	default:
		return []string{e.tp.App.Path()}
	}
}

// nsPIDs lists the processes in the network namespace at path.
func nsPIDs(path string) []int {
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			out = append(out, pid)
		}
	}
	return out
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
	name, args = e.server(name, args...)
	p, err := e.tp.App.StartEnv(ctx, env, name, args...)
	if err != nil {
		return err
	}
	e.procs = append(e.procs, p)
	return nil
}

// target is where one side serves; a port of 0 is a server the side does
// not run.
type target struct {
	side                                  string
	addr                                  netip.Addr
	httpPort, iperfPort                   int
	redisPort, memcachedPort, udpEchoPort int
}

func (t target) url() string { return fmt.Sprintf("http://%s:%d/%s", t.addr, t.httpPort, fileName) }

func (t target) hostPort(port int) string { return netip.AddrPortFrom(t.addr, uint16(port)).String() }

func (e *env) targets() map[string]target {
	ins := e.iso.insAddrs()[0]
	small := func(t target) target {
		if e.o.phase("small") {
			t.redisPort, t.memcachedPort, t.udpEchoPort = redisPort, memcachedPort, udpEchoPort
		}
		return t
	}
	return map[string]target{
		report.Native:   small(target{side: report.Native, addr: nativeAddr, httpPort: nginxPort, iperfPort: iperfPort}),
		report.Runsc:    small(target{side: report.Runsc, addr: runscAddr, httpPort: nginxPort, iperfPort: iperfPort}),
		report.Netstack: {side: report.Netstack, addr: ins, httpPort: netstackHTTPPort, iperfPort: netstackIperf},
		report.MPShim:   small(target{side: report.MPShim, addr: ins, httpPort: nginxPort, iperfPort: iperfPort}),
	}
}

// checkServed fetches the file from every side with curl in wan and
// compares it byte for byte.
func (e *env) checkServed(ctx context.Context) error {
	var errs []error
	for _, side := range e.sides {
		t := e.targets()[side]
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

// restartNginx restarts the nginx of the native and the mpshim side with
// e.workers workers.
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

// cpuMeter measures the CPU a side's server side uses during a run (every
// process in its namespace, idle servers included, and its INS) and the
// frames the INS send and receive.
type cpuMeter struct {
	e           *env
	ins, server []int
	i0, s0      time.Duration
	tx0, rx0    uint64
	calls       *callCounter // with --count-calls, on INS sides
}

func (e *env) startCPU(side string) *cpuMeter {
	m := &cpuMeter{e: e}
	for _, ns := range e.sideNS(side) {
		m.server = append(m.server, nsPIDs(ns)...)
	}
	if side == report.MPShim || side == report.Netstack {
		for _, in := range e.iso.ins {
			m.ins = append(m.ins, in.PID)
		}
		m.tx0, m.rx0 = e.iso.frames()
		if e.o.countCalls {
			var err error
			if m.calls, err = startCallCounter(m.ins); err != nil {
				e.note("counting the INS system calls: %v", err)
			}
		}
	}
	m.i0, m.s0 = sumCPU(m.ins), sumCPU(m.server)
	return m
}

// stop returns the CPU used by the INS and by the side's other processes
// since start.
func (m *cpuMeter) stop() (ins, server time.Duration) {
	ins, server = sumCPU(m.ins)-m.i0, sumCPU(m.server)-m.s0
	if m.calls != nil {
		if err := m.calls.stop(); err != nil {
			m.e.note("counting the INS system calls: %v", err)
			m.calls = nil
		}
	}
	return ins, server
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
