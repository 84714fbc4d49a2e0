// Command lb measures the XDP load balancer (lb/xdp) on a real interface:
// the gw end of a veth pair from a client namespace into a test topology's
// gw namespace, with the program attached, and up to four backends, each a namespace with a macvlan child of that interface
// holding the VIP and Debian's nginx (one worker, a 1 KiB file), as INS
// hold it. wrk in the client namespace drives HTTP through the VIP.
//
// Figures, medians over the rounds:
//
//	rps-N        wrk -t2 -c64 through the VIP with N = 1, 2, 4 backends (req/s)
//	cpu-N        machine CPU time per request in those runs (µs; includes
//	             wrk, nginx and the kernel's TCP on both sides)
//	ns/pkt       the program's mean run time per packet from the kernel's
//	             BPF statistics (run_time_ns / run_cnt, BPF_ENABLE_STATS
//	             for the run, which is what kernel.bpf_stats_enabled=1 turns
//	             on globally)
//	ns/pkt-burst the same over a burst of 200,000 frames of 1,000
//	             established flows sent with a packet socket (caches hot)
//	ns/pkt-floor the same burst through a program that only returns
//	             XDP_PASS, attached in the balancer's place: the part of
//	             the figures above that is the measurement's and the
//	             frame's, not the balancer's
//	ns/pkt-floor-wrk that program's time per packet under wrk -t2 -c64 to
//	             the first backend's own address: the floor of ns/pkt
//	p50-vip      wrk -t1 -c1 --latency to the VIP, one backend (µs), the
//	             median of -lat-pairs runs of -lat-t each, wrk pinned to
//	             one CPU and nginx to the other
//	p50-direct   the same to that backend's own address, bypassing the
//	             program (µs), each run right after or before a VIP run
//	             (the order alternates)
//	vip-added    the latency the VIP adds: the median over the pairs of
//	             p50-vip minus p50-direct (µs)
//	switch       SetBackends: rebuild the 65,537-entry table and switch (ms)
//
// Then the same through the daemon (runINS): the isolator's INS behind the
// VIP instead of kernel nginx backends (-ins=false skips it, -prog=false
// the first part).
//
//	go run ./bench/lb [-rounds 3] [-t 5s] [-lat-pairs 15] [-lat-t 1s] [-native] [-prog=true] [-ins=true] [-bin bin] [-est N] [-new N] [-cache N]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/bench/internal/parse"
	"github.com/mpshim/mpshim/bench/internal/report"
	lbxdp "github.com/mpshim/mpshim/lb/xdp"
	"github.com/mpshim/mpshim/test/topo"
)

// Table sizes of the balancer (flags -est, -new, -cache).
var estEntries, newEntries, cacheSlots *int

// native attaches the programs in the veth driver's mode (flag -native)
// instead of the generic one the daemon uses.
var native *bool

// The latency comparison (flags -lat-pairs, -lat-t).
var latPairs *int
var latDur *time.Duration

func main() {
	rounds := flag.Int("rounds", 3, "rounds of every figure")
	dur := flag.Duration("t", 5*time.Second, "duration of each wrk run")
	withProg := flag.Bool("prog", true, "measure the program with kernel nginx backends")
	withINS := flag.Bool("ins", true, "measure the isolator's INS behind the VIP")
	bin := flag.String("bin", "bin", "directory of the built isolator and libmpshim.so")
	native = flag.Bool("native", false, "attach in the veth driver's XDP mode instead of the generic one (the first part only)")
	estEntries = flag.Int("est", 0, "established-flow table entries (0: the default)")
	newEntries = flag.Int("new", 0, "new-flow table entries (0: the default)")
	cacheSlots = flag.Int("cache", 0, "flow cache slots, a power of two (0: the default)")
	latPairs = flag.Int("lat-pairs", 15, "pairs of wrk -c1 runs (VIP, direct) for the latency the VIP adds")
	latDur = flag.Duration("lat-t", time.Second, "duration of each of those runs")
	flag.Parse()
	if *withProg {
		if err := run(*rounds, *dur); err != nil {
			fmt.Fprintln(os.Stderr, "bench/lb:", err)
			os.Exit(1)
		}
	}
	if *withINS {
		if err := runINS(*bin, *rounds, *dur); err != nil {
			fmt.Fprintln(os.Stderr, "bench/lb:", err)
			os.Exit(1)
		}
	}
}

type backend struct {
	ns   *topo.NS
	be   lbxdp.Backend
	own  netip.Addr
	conf string
}

func run(rounds int, dur time.Duration) (err error) {
	for _, p := range []string{"/usr/sbin/nginx", "/usr/bin/wrk"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s missing (scripts/deps.sh bench installs it): %w", p, err)
		}
	}
	ctx := context.Background()
	tp, err := topo.Build(ctx, topo.Config{Uplinks: 1, NoIPv6: true})
	if err != nil {
		return err
	}
	defer tp.Close()
	dir, err := os.MkdirTemp("", "mpshim-lb-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "f"), make([]byte, 1024), 0o644); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	// A client namespace wired straight to gw by a veth pair (the
	// topology's uplinks pass through a user-space relay that would be
	// measured too); the gw end carries the program and is the lower
	// device of the backends' macvlans.
	cl, err := tp.NewNS("cl")
	if err != nil {
		return err
	}
	ipc := func(args ...string) error {
		out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	const lbIf = "lbup"
	for _, args := range [][]string{
		{"-n", cl.Name, "link", "add", "name", "c0", "type", "veth", "peer", "name", lbIf, "netns", tp.GW.Name},
		{"-n", cl.Name, "addr", "add", "10.78.0.1/24", "dev", "c0"},
		{"-n", cl.Name, "link", "set", "c0", "up"},
		{"-n", tp.GW.Name, "link", "set", lbIf, "up"},
	} {
		if err := ipc(args...); err != nil {
			return err
		}
	}
	vip := netip.MustParseAddr("10.78.0.100")
	var gwMAC net.HardwareAddr
	var gwIndex int
	if err := tp.GW.Do(func() error {
		ifc, err := net.InterfaceByName(lbIf)
		if err == nil {
			gwMAC, gwIndex = ifc.HardwareAddr, ifc.Index
		}
		return err
	}); err != nil {
		return err
	}
	lb, err := lbxdp.New(lbxdp.Config{EstEntries: *estEntries, NewEntries: *newEntries, FlowCache: *cacheSlots})
	if err != nil {
		return err
	}
	defer lb.Close()
	if err := lb.AddVIP(vip, gwMAC); err != nil {
		return err
	}
	if err := tp.GW.Do(func() error { return lb.Attach(gwIndex, !*native) }); err != nil {
		return err
	}
	if *native {
		// XDP_TX (the program's ARP answers) on a veth in the driver's
		// mode needs the peer to receive in NAPI, which an XDP program of
		// its own turns on: one that passes everything.
		l, err := attachPass(cl, "c0")
		if err != nil {
			return err
		}
		defer l.Close()
	}
	var bes []*backend
	for id := 1; id <= 4; id++ {
		ns, err := tp.NewNS(fmt.Sprintf("be%d", id))
		if err != nil {
			return err
		}
		ifname := fmt.Sprintf("lb%d", id)
		mac := net.HardwareAddr{0x02, 0xbb, 0, 0, 0, byte(id)}
		own := netip.AddrFrom4([4]byte{10, 78, 0, byte(150 + id)})
		// The VIP on loopback, as direct server return wants it; the
		// program answers ARP for it.
		for _, kv := range [][2]string{{"net.ipv4.conf.all.arp_ignore", "1"}, {"net.ipv4.conf.all.arp_announce", "2"}} {
			if err := ns.SetSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		for _, args := range [][]string{
			{"-n", tp.GW.Name, "link", "add", "link", lbIf, "name", ifname, "address", mac.String(), "type", "macvlan", "mode", "bridge"},
			{"-n", tp.GW.Name, "link", "set", ifname, "netns", ns.Name},
			{"-n", ns.Name, "addr", "add", vip.String() + "/32", "dev", "lo"},
			{"-n", ns.Name, "addr", "add", own.String() + "/24", "dev", ifname},
			{"-n", ns.Name, "link", "set", ifname, "up"},
		} {
			if err := ipc(args...); err != nil {
				return err
			}
		}
		b := &backend{ns: ns, own: own, be: lbxdp.Backend{ID: uint32(id), Name: fmt.Sprintf("ins-%d", id), MAC: mac, Weight: 1, State: lbxdp.Up}}
		b.conf = filepath.Join(dir, fmt.Sprintf("nginx%d.conf", id))
		conf := fmt.Sprintf(`daemon on;
worker_processes 1;
worker_cpu_affinity 01;
pid %[1]s/nginx%[2]d.pid;
error_log %[1]s/error%[2]d.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    server { listen 80 backlog=4096; root %[1]s; }
}
`, dir, id)
		if err := os.WriteFile(b.conf, []byte(conf), 0o644); err != nil {
			return err
		}
		if out, err := ns.Command(ctx, "/usr/sbin/nginx", "-c", b.conf).CombinedOutput(); err != nil {
			return fmt.Errorf("nginx in %s: %w: %s", ns.Name, err, out)
		}
		defer func() {
			_ = ns.Command(context.Background(), "/usr/sbin/nginx", "-c", b.conf, "-s", "stop").Run()
		}()
		bes = append(bes, b)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer stats.Close()

	m := map[string]*report.Metric{}
	add := func(name string, v float64) {
		if m[name] == nil {
			m[name] = &report.Metric{}
		}
		m[name].Add("lb", v)
	}
	wrk := func(args ...string) (parse.Wrk, error) {
		out, err := cl.Run(ctx, "wrk", append([]string{"-d", fmt.Sprint(int(dur.Seconds())) + "s", "--latency"}, args...)...)
		if err != nil {
			return parse.Wrk{}, err
		}
		w, err := parse.ParseWrk(out)
		if err != nil {
			return w, err
		}
		return w, w.Err()
	}
	slog.Info("bench/lb: start", "load", report.LoadAvg())
	for r := range rounds {
		for _, n := range []int{1, 2, 4} {
			var set []lbxdp.Backend
			for _, b := range bes[:n] {
				set = append(set, b.be)
			}
			start := time.Now()
			if err := lb.SetBackends(set); err != nil {
				return err
			}
			add("switch", float64(time.Since(start).Microseconds())/1000)
			ps0, err := lb.Program().Stats()
			if err != nil {
				return fmt.Errorf("program statistics: %w", err)
			}
			cpu0, err := busyTime()
			if err != nil {
				return err
			}
			w, err := wrk("-t2", "-c64", "http://"+vip.String()+"/f")
			if err != nil {
				return fmt.Errorf("round %d, %d backends: %w", r, n, err)
			}
			cpu1, err := busyTime()
			if err != nil {
				return err
			}
			ps1, err := lb.Program().Stats()
			if err != nil {
				return err
			}
			add(fmt.Sprintf("rps-%d", n), w.RPS)
			add(fmt.Sprintf("cpu-%d", n), float64((cpu1-cpu0).Microseconds())/float64(w.Requests))
			if runs := ps1.RunCount - ps0.RunCount; runs > 0 {
				add("ns/pkt", float64(ps1.Runtime-ps0.Runtime)/float64(runs))
			}
		}
		// A burst of frames of established flows, sent from the client
		// side with a packet socket: the program's cost at a high packet
		// rate, when its maps stay in the cache.
		perPkt, err := burst(cl, lb.Program(), vip, gwMAC)
		if err != nil {
			return fmt.Errorf("round %d, burst: %w", r, err)
		}
		add("ns/pkt-burst", perPkt)
		slog.Info("bench/lb: round done", "round", r+1)
	}
	// The latency the VIP adds at one connection: pairs of runs through the
	// VIP and straight to the backend's own address, the order alternating
	// so that a drift of the machine's load does not favour either side.
	if err := lb.SetBackends([]lbxdp.Backend{bes[0].be}); err != nil {
		return err
	}
	if err := latency(ctx, cl, "http://"+vip.String()+"/f", "http://"+bes[0].own.String()+"/f", "", add); err != nil {
		return err
	}
	// The floor: the same burst through a program that only passes the
	// frame, in the balancer's place. What the kernel's statistics count
	// beyond the balancer's own work (their clock reads, the first touch
	// of the frame) is in it.
	if err := lb.Close(); err != nil {
		return err
	}
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "Apache-2.0",
		Instructions: asm.Instructions{
			// Read the frame's EtherType, as every program must.
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.Mov.Imm(asm.R0, lbxdp.ActionPass),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14),
			asm.JGT.Reg(asm.R4, asm.R3, "out"),
			asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
			asm.JNE.Imm(asm.R5, 0x1234, "out"),
			asm.Mov.Imm(asm.R0, lbxdp.ActionDrop),
			asm.Return().WithSymbol("out"),
		}})
	if err != nil {
		return fmt.Errorf("load the pass program: %w", err)
	}
	defer pass.Close()
	var pl link.Link
	if err := tp.GW.Do(func() (err error) {
		opts := link.XDPOptions{Program: pass, Interface: gwIndex, Flags: link.XDPGenericMode}
		if *native {
			opts.Flags = link.XDPDriverMode
		}
		pl, err = link.AttachXDP(opts)
		return err
	}); err != nil {
		return fmt.Errorf("attach the pass program: %w", err)
	}
	defer pl.Close()
	for r := range rounds {
		perPkt, err := burst(cl, pass, vip, gwMAC)
		if err != nil {
			return fmt.Errorf("round %d, floor burst: %w", r, err)
		}
		add("ns/pkt-floor", perPkt)
		// The floor under real traffic: wrk to the backend's own address
		// (its frames cross the interface as the VIP's do, to the
		// backend's MAC), the pass program counting.
		ps0, err := pass.Stats()
		if err != nil {
			return fmt.Errorf("program statistics: %w", err)
		}
		if _, err := wrk("-t2", "-c64", "http://"+bes[0].own.String()+"/f"); err != nil {
			return fmt.Errorf("round %d, floor under wrk: %w", r, err)
		}
		ps1, err := pass.Stats()
		if err != nil {
			return err
		}
		if runs := ps1.RunCount - ps0.RunCount; runs > 0 {
			add("ns/pkt-floor-wrk", float64(ps1.Runtime-ps0.Runtime)/float64(runs))
		}
	}
	fmt.Printf("| figure | median | spread |\n|---|---|---|\n")
	for _, name := range []string{"rps-1", "rps-2", "rps-4", "cpu-1", "cpu-2", "cpu-4", "ns/pkt", "ns/pkt-burst", "ns/pkt-floor", "ns/pkt-floor-wrk", "p50-vip", "p50-direct", "vip-added", "switch"} {
		med, _ := m[name].Median("lb")
		spread, _ := m[name].Spread("lb")
		fmt.Printf("| %s | %s | %s |\n", name, report.FormatValue(med), report.FormatValue(spread))
	}
	added, _ := m["vip-added"].Median("lb")
	fmt.Printf("\nlatency the VIP adds at wrk -c1 (median over %d pairs of the p50 difference): %.1f µs; load %s; %d CPUs\n", *latPairs, added, report.LoadAvg(), runtimeCPUs())
	return nil
}

// latency runs -lat-pairs pairs of wrk -t1 -c1 --latency runs of -lat-t
// from ns, one to vipURL and one to directURL, the order alternating so
// that a drift of the machine's load favours neither, with wrk on CPU 1;
// it adds the p50 of each (prefix+"p50-vip", prefix+"p50-direct", µs) and
// their difference (prefix+"vip-added").
func latency(ctx context.Context, ns *topo.NS, vipURL, directURL, prefix string, add func(string, float64)) error {
	for i := range *latPairs {
		var p50 [2]float64
		for j := range 2 {
			k := (i + j) % 2
			out, err := ns.Run(ctx, "taskset", "-c", "1", "wrk", "-d", fmt.Sprint(max(1, int(latDur.Seconds())))+"s",
				"--latency", "-t1", "-c1", []string{vipURL, directURL}[k])
			if err != nil {
				return fmt.Errorf("latency pair %d: %w", i, err)
			}
			w, err := parse.ParseWrk(out)
			if err == nil {
				err = w.Err()
			}
			if err != nil {
				return fmt.Errorf("latency pair %d: %w", i, err)
			}
			p50[k] = float64(w.P50.Nanoseconds()) / 1000
		}
		add(prefix+"p50-vip", p50[0])
		add(prefix+"p50-direct", p50[1])
		add(prefix+"vip-added", p50[0]-p50[1])
		slog.Info("bench/lb: latency pair", "pair", i+1, "vip_us", p50[0], "direct_us", p50[1], "load", report.LoadAvg())
	}
	return nil
}

// attachPass attaches a program that passes every frame to interface
// ifname of ns in the driver's mode.
func attachPass(ns *topo.NS, ifname string) (link.Link, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "Apache-2.0",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, lbxdp.ActionPass), asm.Return()}})
	if err != nil {
		return nil, fmt.Errorf("load a pass program: %w", err)
	}
	defer prog.Close() // the link holds it
	var l link.Link
	err = ns.Do(func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach a pass program to %s: %w", ifname, err)
	}
	return l, nil
}

// busyTime is the machine's non-idle CPU time so far (/proc/stat).
func busyTime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += n
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(busy) * 10 * time.Millisecond, nil
}

func runtimeCPUs() int {
	var s unix.CPUSet
	if err := unix.SchedGetaffinity(0, &s); err != nil {
		return 0
	}
	return s.Count()
}

// burst sends 200,000 TCP ACK frames of 1,000 flows (each first sent once,
// so that it is established) from the client namespace to the VIP and
// returns the program's mean run time per packet over the burst. The
// backends' kernels drop the segments (no such connection) or answer with
// resets; only the program's cost is measured.
func burst(cl *topo.NS, prog *ebpf.Program, vip netip.Addr, gwMAC net.HardwareAddr) (float64, error) {
	var fd, ifindex int
	var src net.HardwareAddr
	err := cl.Do(func() error {
		ifc, err := net.InterfaceByName("c0")
		if err != nil {
			return err
		}
		ifindex, src = ifc.Index, ifc.HardwareAddr
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	frame := func(port uint16) []byte {
		f := make([]byte, 54)
		copy(f[0:6], gwMAC)
		copy(f[6:12], src)
		f[12], f[13] = 0x08, 0x00
		ip := f[14:]
		ip[0], ip[3], ip[8], ip[9] = 0x45, 40, 64, 6
		copy(ip[12:16], []byte{10, 78, 0, 1})
		v := vip.As4()
		copy(ip[16:20], v[:])
		tcp := ip[20:]
		tcp[0], tcp[1] = byte(port>>8), byte(port)
		tcp[3] = 81 // a port nothing listens on
		tcp[12], tcp[13] = 5<<4, 0x10
		return f
	}
	to := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}
	frames := make([][]byte, 1000)
	for i := range frames {
		frames[i] = frame(uint16(20000 + i))
		for range 2 { // first packet, then the one that promotes it
			if err := unix.Sendto(fd, frames[i], 0, to); err != nil {
				return 0, err
			}
		}
	}
	time.Sleep(50 * time.Millisecond)
	ps0, err := prog.Stats()
	if err != nil {
		return 0, err
	}
	for i := range 200000 {
		for {
			err := unix.Sendto(fd, frames[i%len(frames)], 0, to)
			if err == nil {
				break
			}
			if err != unix.ENOBUFS {
				return 0, err
			}
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(50 * time.Millisecond)
	ps1, err := prog.Stats()
	if err != nil {
		return 0, err
	}
	runs := ps1.RunCount - ps0.RunCount
	if runs < 200000 {
		return 0, fmt.Errorf("the program ran %d times for 200,000 frames", runs)
	}
	return float64(ps1.Runtime-ps0.Runtime) / float64(runs), nil
}
