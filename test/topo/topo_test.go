package topo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv selects a helper mode of the test binary (see TestHelper).
const helperEnv = "MPT_TOPO_HELPER"

func requirePing(t *testing.T) {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatal("ping not found: install Debian package iputils-ping")
	}
}

// rootNetState lists link names and addresses of the root namespace.
func rootNetState(t *testing.T) (links, addrs []string) {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -o link: %v: %s", err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			links = append(links, f[1])
		}
	}
	out, err = exec.Command("ip", "-o", "addr").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -o addr: %v: %s", err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 3 {
			addrs = append(addrs, f[1]+" "+f[3])
		}
	}
	slices.Sort(links)
	slices.Sort(addrs)
	return links, addrs
}

// addMacvlanHost makes a macvlan child (mode bridge) of the gw end of
// uplink u inside ns, with address HostAddr4(n) and, if the uplink has one,
// HostAddr6(n): what an INS does.
func addMacvlanHost(t *testing.T, topo *Topology, u Uplink, ns *NS, n int) string {
	t.Helper()
	ctx := context.Background()
	mv := fmt.Sprintf("mv%d", u.Index)
	cmds := [][]string{
		{"-n", topo.GW.Name, "link", "add", "link", u.GWIf, "name", mv, "type", "macvlan", "mode", "bridge"},
		{"-n", topo.GW.Name, "link", "set", mv, "netns", ns.Name},
		{"-n", ns.Name, "addr", "add", u.HostAddr4(n).String() + "/24", "dev", mv},
	}
	if u.Subnet6.IsValid() {
		cmds = append(cmds, []string{"-n", ns.Name, "addr", "add", u.HostAddr6(n).String() + "/64", "dev", mv, "nodad"})
	}
	cmds = append(cmds, []string{"-n", ns.Name, "link", "set", mv, "up"})
	for _, c := range cmds {
		if err := ip(ctx, c...); err != nil {
			t.Fatalf("macvlan host: %v", err)
		}
	}
	return mv
}

// ping pings addr from ns once and reports success.
func ping(ns *NS, addr netip.Addr) error {
	_, err := ns.Run(context.Background(), "ping", "-n", "-c", "1", "-W", "1", addr.String())
	return err
}

// eventually retries f for up to d.
func eventually(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var rttRE = regexp.MustCompile(`= ([0-9.]+)/([0-9.]+)/([0-9.]+)/`)

// minRTT pings addr from ns a few times and returns the smallest RTT.
func minRTT(t *testing.T, ns *NS, addr netip.Addr) time.Duration {
	t.Helper()
	out, err := ns.Run(context.Background(), "ping", "-n", "-c", "4", "-i", "0.05", "-W", "2", addr.String())
	if err != nil {
		t.Fatalf("ping %v: %v", addr, err)
	}
	m := rttRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rtt summary in ping output:\n%s", out)
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("parse rtt %q: %v", m[1], err)
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// serveTCP listens on addr port 0 inside ns; every connection is read to
// EOF and the byte count reported on the returned channel. The listener
// is closed at test end.
func serveTCP(t *testing.T, ns *NS, addr netip.Addr) (netip.AddrPort, <-chan int64) {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	counts := make(chan int64, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				counts <- n
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String()), counts
}

// dialFrom connects from ns to ap.
func dialFrom(ns *NS, ap netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", ap.String(), 3*time.Second)
		return err
	})
	return c, err
}

// gone reports whether pid no longer runs (zombies count as gone).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

func TestTopology(t *testing.T) {
	requirePing(t)
	linksBefore, addrsBefore := rootNetState(t)
	const delay = 25 * time.Millisecond
	const rate = 16.0
	topo := New(t, Config{
		Uplinks: 2,
		Shape:   []Shape{{}, {Delay: delay, RateMbit: rate}},
	})
	ctx := context.Background()

	t.Run("namespaces", func(t *testing.T) {
		names := topo.Namespaces()
		for _, want := range []*NS{topo.WAN, topo.GW, topo.App} {
			if !slices.Contains(names, want.Name) || !netnsExists(want.Name) {
				t.Errorf("namespace %s missing (have %v)", want.Name, names)
			}
			if !strings.HasPrefix(want.Name, topo.ID+"-") || !strings.HasPrefix(topo.ID, "mpt") {
				t.Errorf("namespace %s not named after topology %s", want.Name, topo.ID)
			}
		}
		for _, n := range names {
			ns := &NS{Name: n}
			for _, key := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv6.conf.default.forwarding"} {
				v, err := ns.Sysctl(key)
				if err != nil {
					t.Fatal(err)
				}
				if v != "0" {
					t.Errorf("%s: %s = %s, want 0", n, key, v)
				}
			}
			out, err := ns.Run(ctx, "ip", "-o", "link", "show", "lo")
			if err != nil || !strings.Contains(out, "UP") {
				t.Errorf("%s: lo not up: %v %s", n, err, out)
			}
		}
		out, err := topo.App.Run(ctx, "ip", "-o", "link")
		if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(lines[0], " lo:") {
			t.Errorf("app namespace has links other than lo:\n%s", out)
		}
		for _, u := range topo.Uplinks {
			out, err := topo.GW.Run(ctx, "ip", "-o", "addr", "show", "dev", u.GWIf, "scope", "global")
			if err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("gw end %s has global addresses or failed: %v %s", u.GWIf, err, out)
			}
			out, err = topo.WAN.Run(ctx, "ip", "-o", "addr", "show", "dev", u.WANIf)
			if err != nil || !strings.Contains(out, u.WANAddr4.String()+"/24") || !strings.Contains(out, u.WANAddr6.String()+"/64") {
				t.Errorf("wan end %s lacks %v/%v: %v %s", u.WANIf, u.WANAddr4, u.WANAddr6, err, out)
			}
			if strings.Contains(out, "tentative") {
				t.Errorf("wan end %s has tentative (DAD) addresses: %s", u.WANIf, out)
			}
		}
		links, addrs := rootNetState(t)
		if !slices.Equal(links, linksBefore) || !slices.Equal(addrs, addrsBefore) {
			t.Errorf("root namespace changed:\nlinks before %v\nlinks after  %v\naddrs before %v\naddrs after  %v",
				linksBefore, links, addrsBefore, addrs)
		}
	})

	ins, err := topo.NewNS("ins0")
	if err != nil {
		t.Fatal(err)
	}
	mvs := make([]string, len(topo.Uplinks))
	for i, u := range topo.Uplinks {
		mvs[i] = addMacvlanHost(t, topo, u, ins, 0)
	}

	t.Run("reach macvlan hosts", func(t *testing.T) {
		for _, u := range topo.Uplinks {
			for _, a := range []netip.Addr{u.HostAddr4(0), u.HostAddr6(0)} {
				if err := ping(topo.WAN, a); err != nil {
					t.Errorf("uplink %d: wan cannot ping %v: %v", u.Index, a, err)
				}
				ap, counts := serveTCP(t, ins, a)
				c, err := dialFrom(topo.WAN, ap)
				if err != nil {
					t.Errorf("uplink %d: wan cannot connect to %v: %v", u.Index, ap, err)
					continue
				}
				msg := []byte("hello over uplink " + strconv.Itoa(u.Index))
				if _, err := c.Write(msg); err != nil {
					t.Errorf("write to %v: %v", ap, err)
				}
				c.Close()
				select {
				case n := <-counts:
					if n != int64(len(msg)) {
						t.Errorf("%v received %d bytes, want %d", ap, n, len(msg))
					}
				case <-time.After(5 * time.Second):
					t.Errorf("%v: no end of stream", ap)
				}
			}
		}
		// The wan end is the only other station: the host address is not
		// reachable from the gw namespace, which has no addresses.
		if err := ping(topo.GW, topo.Uplinks[0].HostAddr4(0)); err == nil {
			t.Error("gw namespace reaches a host address: gw end must carry no route")
		}
	})

	t.Run("delay", func(t *testing.T) {
		u0, u1 := topo.Uplinks[0], topo.Uplinks[1]
		if rtt := minRTT(t, topo.WAN, u1.HostAddr4(0)); rtt < 2*delay {
			t.Errorf("shaped uplink RTT %v < 2×%v", rtt, delay)
		}
		if rtt := minRTT(t, topo.WAN, u1.HostAddr6(0)); rtt < 2*delay {
			t.Errorf("shaped uplink IPv6 RTT %v < 2×%v", rtt, delay)
		}
		if rtt := minRTT(t, topo.WAN, u0.HostAddr4(0)); rtt >= delay {
			t.Errorf("unshaped uplink RTT %v ≥ %v", rtt, delay)
		}
	})

	t.Run("rate", func(t *testing.T) {
		// Goodput over the shaped uplink stays near the tbf rate while the
		// unshaped one carries several times more.
		measure := func(a netip.Addr) float64 {
			ap, counts := serveTCP(t, ins, a)
			c, err := dialFrom(topo.WAN, ap)
			if err != nil {
				t.Fatalf("connect %v: %v", ap, err)
			}
			buf := make([]byte, 64<<10)
			start := time.Now()
			c.SetWriteDeadline(start.Add(1500 * time.Millisecond))
			for {
				if _, err := c.Write(buf); err != nil {
					break
				}
			}
			c.Close()
			var n int64
			select {
			case n = <-counts:
			case <-time.After(10 * time.Second):
				t.Fatalf("%v: no end of stream", ap)
			}
			return float64(n) * 8 / time.Since(start).Seconds() / 1e6
		}
		shaped := measure(topo.Uplinks[1].HostAddr4(0))
		free := measure(topo.Uplinks[0].HostAddr4(0))
		t.Logf("goodput: shaped %.1f Mbit/s (limit %.0f), unshaped %.1f Mbit/s", shaped, rate, free)
		if shaped > rate*1.25 || shaped < rate*0.3 {
			t.Errorf("shaped goodput %.1f Mbit/s, want about %.0f", shaped, rate)
		}
		if free < 3*rate {
			t.Errorf("unshaped goodput %.1f Mbit/s, want well above %.0f", free, rate)
		}
	})

	t.Run("wire format frames", func(t *testing.T) {
		// A plain packet socket on an INS's macvlan child (what a
		// user-space stack reads) sees frames of at most one MTU with
		// complete TCP checksums, though the wan sender is a kernel stack.
		var fd int
		err := ins.Do(func() error {
			var err error
			fd, err = openPlainPacket(mvs[0])
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		ap, counts := serveTCP(t, ins, topo.Uplinks[0].HostAddr4(0))
		c, err := dialFrom(topo.WAN, ap)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c.Write(make([]byte, 1<<20))
			c.Close()
		}()
		buf := make([]byte, 1<<16)
		big, checked := 0, 0
		for checked < 200 {
			n, _, err := syscall.Recvfrom(fd, buf, syscall.MSG_TRUNC)
			if err != nil {
				t.Fatalf("recv: %v", err)
			}
			f := buf[:n]
			if n > 1514 {
				t.Fatalf("frame of %d bytes on the INS side, want ≤ 1514", n)
			}
			// IPv4 TCP toward the server port only.
			if n < 14+20+20 || f[12] != 0x08 || f[13] != 0 || f[14+9] != 6 {
				continue
			}
			ihl := int(f[14]&0x0f) * 4
			seg := f[14+ihl:]
			if int(seg[2])<<8|int(seg[3]) != int(ap.Port()) {
				continue
			}
			if !tcpChecksumOK(f[14:14+ihl], seg) {
				t.Fatalf("TCP segment of %d bytes with incomplete checksum", len(seg))
			}
			checked++
			if n > 1000 {
				big++
			}
		}
		if big == 0 {
			t.Error("no full-size data frames seen")
		}
		<-counts
	})

	t.Run("set shape", func(t *testing.T) {
		u1 := topo.Uplinks[1]
		if err := topo.SetShape(1, Shape{LossPercent: 100}); err != nil {
			t.Fatal(err)
		}
		if err := ping(topo.WAN, u1.HostAddr4(0)); err == nil {
			t.Error("ping passes 100% loss")
		}
		if err := topo.SetShape(1, Shape{}); err != nil {
			t.Fatal(err)
		}
		if err := eventually(3*time.Second, func() error { return ping(topo.WAN, u1.HostAddr4(0)) }); err != nil {
			t.Errorf("no reachability after loss removed: %v", err)
		}
		if rtt := minRTT(t, topo.WAN, u1.HostAddr4(0)); rtt >= delay {
			t.Errorf("RTT %v after removing the delay, want < %v", rtt, delay)
		}
		out, err := ip2(ctx, "tc", "-n", topo.link.Name, "qdisc", "show", "dev", "w1")
		if err != nil || strings.Contains(out, "tbf") {
			t.Errorf("tbf left after rate removed: %v %s", err, out)
		}
		if err := topo.SetShape(5, Shape{}); err == nil {
			t.Error("SetShape on missing uplink succeeded")
		}
		if err := topo.SetShape(1, Shape{LossPercent: 101}); err == nil {
			t.Error("SetShape with 101% loss succeeded")
		}
	})

	t.Run("uplink down and up", func(t *testing.T) {
		u0, u1 := topo.Uplinks[0], topo.Uplinks[1]
		if err := topo.SetUplinkDown(0); err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{u0.HostAddr4(0), u0.HostAddr6(0)} {
			if err := ping(topo.WAN, a); err == nil {
				t.Errorf("%v reachable with uplink 0 down", a)
			}
		}
		out, err := ins.Run(ctx, "ip", "-o", "link", "show", "dev", mvs[0])
		if err != nil || !strings.Contains(out, "NO-CARRIER") {
			t.Errorf("macvlan child of a cut uplink keeps carrier: %v %s", err, out)
		}
		out, err = topo.WAN.Run(ctx, "ip", "-o", "link", "show", "dev", u0.WANIf)
		if err != nil || !strings.Contains(out, "NO-CARRIER") {
			t.Errorf("wan end of a cut uplink has carrier: %v %s", err, out)
		}
		if err := ping(topo.WAN, u1.HostAddr4(0)); err != nil {
			t.Errorf("uplink 1 lost with uplink 0 down: %v", err)
		}
		if err := topo.SetUplinkUp(0); err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{u0.HostAddr4(0), u0.HostAddr6(0)} {
			if err := eventually(5*time.Second, func() error { return ping(topo.WAN, a) }); err != nil {
				t.Errorf("%v unreachable after SetUplinkUp: %v", a, err)
			}
		}
	})

	// Processes: one tracked, one untracked in its own session that only
	// the namespace scan can find.
	tracked := map[string]*Proc{}
	for _, ns := range []*NS{topo.WAN, topo.App, ins} {
		p, err := ns.Start(ctx, "sleep", "1000")
		if err != nil {
			t.Fatal(err)
		}
		tracked[ns.Name] = p
	}
	stray := topo.GW.Command(ctx, "setsid", "sleep", "1000")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan struct{})
	go func() { stray.Wait(); close(strayDone) }()
	echo, err := topo.WAN.Start(ctx, "sh", "-c", "echo out; echo err >&2")
	if err != nil {
		t.Fatal(err)
	}
	if err := echo.Wait(); err != nil {
		t.Errorf("echo: %v", err)
	}
	if out := echo.Output(); !strings.Contains(out, "out\n") || !strings.Contains(out, "err\n") {
		t.Errorf("captured output %q", out)
	}
	if fail, _ := topo.WAN.Start(ctx, "sh", "-c", "exit 3"); fail.Wait() == nil {
		t.Error("exit 3 reported as success")
	}
	time.Sleep(100 * time.Millisecond) // let setsid exec sleep
	strayPID := stray.Process.Pid

	names := topo.Namespaces()
	if err := topo.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, n := range names {
		if netnsExists(n) {
			t.Errorf("namespace %s left after Close", n)
		}
	}
	for n, p := range tracked {
		if !gone(p.PID()) {
			t.Errorf("process %d in %s alive after Close", p.PID(), n)
		}
	}
	select {
	case <-strayDone:
	case <-time.After(5 * time.Second):
		t.Errorf("untracked process %d in gw alive after Close", strayPID)
	}
	if _, err := os.Stat(statePath(topo.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left after Close: %v", err)
	}
	links, addrs := rootNetState(t)
	if !slices.Equal(links, linksBefore) || !slices.Equal(addrs, addrsBefore) {
		t.Errorf("root namespace changed after Close: links %v addrs %v", links, addrs)
	}
	if err := topo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := topo.WAN.Start(ctx, "true"); err == nil {
		t.Error("Start on a closed topology succeeded")
	}
}

// ip2 runs ip or tc and returns the output.
func ip2(ctx context.Context, prog string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	return string(out), err
}

func TestNoIPv6(t *testing.T) {
	requirePing(t)
	topo := New(t, Config{Uplinks: 1, NoIPv6: true})
	u := topo.Uplinks[0]
	if u.Subnet6.IsValid() || u.WANAddr6.IsValid() {
		t.Errorf("IPv6 subnet %v / %v with NoIPv6", u.Subnet6, u.WANAddr6)
	}
	out, err := topo.WAN.Run(context.Background(), "ip", "-6", "-o", "addr", "show", "dev", u.WANIf, "scope", "global")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("global IPv6 on wan end with NoIPv6: %v %s", err, out)
	}
	ins, err := topo.NewNS("h")
	if err != nil {
		t.Fatal(err)
	}
	addMacvlanHost(t, topo, u, ins, 7)
	if err := ping(topo.WAN, u.HostAddr4(7)); err != nil {
		t.Error(err)
	}
	if _, err := topo.NewNS("h"); err == nil {
		t.Error("duplicate NewNS succeeded")
	}
	if _, err := topo.NewNS("Bad-Name"); err == nil {
		t.Error("NewNS with invalid suffix succeeded")
	}
}

// TestDirect checks a direct topology: the wan reaches a host behind the
// gw end without the emulator, whose namespace holds no link, and shaping
// is refused.
func TestDirect(t *testing.T) {
	requirePing(t)
	topo := New(t, Config{Uplinks: 1, NoIPv6: true, Direct: true})
	u := topo.Uplinks[0]
	ins, err := topo.NewNS("h")
	if err != nil {
		t.Fatal(err)
	}
	addMacvlanHost(t, topo, u, ins, 7)
	if err := ping(topo.WAN, u.HostAddr4(7)); err != nil {
		t.Error(err)
	}
	out, err := topo.link.Run(context.Background(), "ip", "-o", "link", "show")
	if err != nil || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("links in the emulator's namespace of a direct topology (want lo only): %v %s", err, out)
	}
	if err := topo.SetShape(0, Shape{Delay: time.Millisecond}); err == nil {
		t.Error("SetShape on a direct uplink succeeded")
	}
	if err := topo.SetUplinkDown(0); err == nil {
		t.Error("SetUplinkDown on a direct uplink succeeded")
	}
	if d := topo.Drops(0); d != 0 {
		t.Errorf("Drops on a direct uplink = %d", d)
	}
}

func TestBuildErrors(t *testing.T) {
	RequireRoot(t)
	for _, cfg := range []Config{
		{Uplinks: 0},
		{Uplinks: MaxUplinks + 1},
		{Uplinks: 1, Shape: []Shape{{}, {}}},
		{Uplinks: 1, Shape: []Shape{{LossPercent: -1}}},
		{Uplinks: 1, Direct: true, Shape: []Shape{{Delay: time.Millisecond}}},
	} {
		if topo, err := Build(context.Background(), cfg); err == nil {
			topo.Close()
			t.Errorf("Build(%+v) succeeded", cfg)
		}
	}
}

func TestParallel(t *testing.T) {
	requirePing(t)
	ids := make(chan string, 2)
	t.Run("group", func(t *testing.T) {
		for i := range 2 {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				topo := New(t, Config{Uplinks: 1})
				ids <- topo.ID
				u := topo.Uplinks[0]
				ins, err := topo.NewNS("ins")
				if err != nil {
					t.Fatal(err)
				}
				// Same subnets in both topologies, different hosts: each
				// wan reaches only its own.
				addMacvlanHost(t, topo, u, ins, i)
				if err := ping(topo.WAN, u.HostAddr4(i)); err != nil {
					t.Errorf("own host: %v", err)
				}
				if err := ping(topo.WAN, u.HostAddr6(i)); err != nil {
					t.Errorf("own host: %v", err)
				}
				if err := ping(topo.WAN, u.HostAddr4(1-i)); err == nil {
					t.Errorf("topology %s reaches the other topology's host %v", topo.ID, u.HostAddr4(1-i))
				}
			})
		}
	})
	close(ids)
	var got []string
	for id := range ids {
		got = append(got, id)
	}
	if len(got) == 2 && got[0] == got[1] {
		t.Errorf("two topologies share id %s", got[0])
	}
}

// startHelper runs this test binary in helper mode and waits for the line
// it prints once its topology is up: "READY <id> <pid of a sleep in wan>".
func startHelper(t *testing.T, mode string) (cmd *exec.Cmd, id string, sleepPID int) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^TestHelper$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				lines <- sc.Text()
			}
		}
		io.Copy(io.Discard, stdout)
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("helper ended before its topology was ready")
		}
		f := strings.Fields(l)
		if len(f) != 3 {
			t.Fatalf("bad helper line %q", l)
		}
		sleepPID, err = strconv.Atoi(f[2])
		if err != nil {
			t.Fatalf("bad helper line %q", l)
		}
		return cmd, f[1], sleepPID
	case <-time.After(30 * time.Second):
		t.Fatal("helper did not get ready in 30 s")
	}
	return nil, "", 0
}

// TestHelper is the body of the subprocess in TestInterrupt and TestReap.
func TestHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("runs only as a subprocess of TestInterrupt and TestReap")
	}
	var topo *Topology
	switch mode {
	case "interrupt":
		topo = New(t, Config{Uplinks: 2, Shape: []Shape{{Delay: time.Millisecond}}})
	case "orphan":
		var err error
		topo, err = Build(context.Background(), Config{Uplinks: 1})
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown helper mode %q", mode)
	}
	if _, err := topo.NewNS("extra"); err != nil {
		t.Fatal(err)
	}
	p, err := topo.WAN.Start(context.Background(), "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("READY %s %d\n", topo.ID, p.PID())
	time.Sleep(time.Minute)
	t.Fatal("helper was not stopped")
}

func TestInterrupt(t *testing.T) {
	RequireRoot(t)
	cmd, id, sleepPID := startHelper(t, "interrupt")
	names := []string{id + "-wan", id + "-gw", id + "-app", id + "-ln", id + "-extra"}
	for _, n := range names {
		if !netnsExists(n) {
			t.Fatalf("helper namespace %s missing", n)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("helper exit: %v, want death by SIGINT", err)
		}
		ws := ee.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
			t.Errorf("helper exit status %v, want killed by SIGINT", ws)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("helper did not exit within 30 s of SIGINT")
	}
	for _, n := range names {
		if netnsExists(n) {
			t.Errorf("namespace %s left after SIGINT", n)
		}
	}
	if err := eventually(3*time.Second, func() error {
		if !gone(sleepPID) {
			return fmt.Errorf("process %d alive", sleepPID)
		}
		return nil
	}); err != nil {
		t.Errorf("after SIGINT: %v", err)
	}
	if _, err := os.Stat(statePath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left after SIGINT: %v", err)
	}
}

func TestReap(t *testing.T) {
	RequireRoot(t)
	live := New(t, Config{Uplinks: 1})
	cmd, id, sleepPID := startHelper(t, "orphan")
	// SIGKILL leaves everything behind: namespaces, state file and the
	// sleep (its own process group).
	cmd.Process.Kill()
	cmd.Wait()
	names := []string{id + "-wan", id + "-gw", id + "-app", id + "-ln", id + "-extra"}
	for _, n := range names {
		if !netnsExists(n) {
			t.Fatalf("leftover namespace %s missing before Reap", n)
		}
	}
	if gone(sleepPID) {
		t.Fatalf("leftover process %d gone before Reap", sleepPID)
	}
	if err := Reap(); err != nil {
		t.Fatalf("Reap: %v", err)
	}
	for _, n := range names {
		if netnsExists(n) {
			t.Errorf("namespace %s left after Reap", n)
		}
	}
	if err := eventually(3*time.Second, func() error {
		if !gone(sleepPID) {
			return fmt.Errorf("process %d alive", sleepPID)
		}
		return nil
	}); err != nil {
		t.Errorf("after Reap: %v", err)
	}
	if _, err := os.Stat(statePath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left after Reap: %v", err)
	}
	// A live owner's topology is untouched.
	for _, n := range live.Namespaces() {
		if !netnsExists(n) {
			t.Errorf("Reap removed live namespace %s", n)
		}
	}
	if _, err := os.Stat(statePath(live.ID)); err != nil {
		t.Errorf("Reap removed live state file: %v", err)
	}
}

// openPlainPacket opens a blocking AF_PACKET socket without vnet header on
// ifname in the calling thread's namespace (2 s receive timeout).
func openPlainPacket(ifname string) (int, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return -1, err
	}
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, int(htons(syscall.ETH_P_ALL)))
	if err != nil {
		return -1, err
	}
	tv := syscall.Timeval{Sec: 2}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// tcpChecksumOK verifies the checksum of an IPv4 TCP segment.
func tcpChecksumOK(iph, seg []byte) bool {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(iph[12:20]) // source and destination address
	sum += 6 + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}
