package lb

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// whoNginx runs nginx under iso's shim in ns; it answers /who with name.
func whoNginx(t *testing.T, ns *topo.NS, iso *harness.Isolator, name string) {
	t.Helper()
	harness.StartNginx(t, harness.NginxOptions{
		NS: ns, Shim: iso,
		Files: map[string][]byte{"who": []byte(name)},
		Config: func(dir, root string) string {
			return fmt.Sprintf(`worker_processes 1;
events { worker_connections 1024; }
http {
    access_log off;
    server { listen 80; root %s; }
}
`, root)
		},
	})
}

// TestRemoteHost balances a VIP over an INS of host A and the INS of
// another isolator host B: A's balancer sends B's share of the flows in
// IP-in-IP to B's tunnel address (through the wan namespace, which routes
// between the two), B's balancer removes the outer header and steers them
// to its own INS, which answer the clients directly. Then the same with
// GUE (gue= on both uplinks), whose UDP frames the test sees on the way.
func TestRemoteHost(t *testing.T) {
	t.Run("ip-in-ip", func(t *testing.T) { remoteHost(t, 0) })
	t.Run("gue", func(t *testing.T) { remoteHost(t, 6080) })
}

// tunnelFrames counts the IP-in-IP and GUE (UDP to port) frames that
// leave interface ifname of ns until stop is closed.
func tunnelFrames(t *testing.T, ns *topo.NS, ifname string, port uint16, stop <-chan struct{}) (ipip, gue *int, done <-chan struct{}) {
	t.Helper()
	var fd int
	if err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		// ETH_P_ALL: a socket of one protocol sees only what arrives.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index})
	}); err != nil {
		t.Fatalf("packet socket on %s: %v", ifname, err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	ipip, gue = new(int), new(int)
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer unix.Close(fd)
		buf := make([]byte, 2048)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 14+20+8 || buf[12] != 0x08 || buf[13] != 0 || buf[14] != 0x45 {
				continue
			}
			switch {
			case buf[23] == 4:
				*ipip++
			case buf[23] == 17 && binary.BigEndian.Uint16(buf[36:]) == port:
				*gue++
			}
		}
	}()
	return ipip, gue, ch
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func remoteHost(t *testing.T, gue uint16) {
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/sbin/nginx", "/usr/bin/curl")
	ctx := context.Background()
	a := topo.New(t, topo.Config{Uplinks: 1, Direct: true, NoIPv6: true})
	b := topo.New(t, topo.Config{Uplinks: 1, Direct: true, NoIPv6: true})
	run := func(ns *topo.NS, args ...string) {
		t.Helper()
		if _, err := ns.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	// B's uplink: a veth from A's wan namespace (the router, 10.79.0.1)
	// to B's gw namespace, whose host holds B's tunnel address 10.79.0.2.
	// A's host holds its tunnel address 10.77.0.2 on its uplink.
	run(a.WAN, "link", "add", "xb", "type", "veth", "peer", "name", "x0", "netns", b.GW.Name)
	run(a.WAN, "addr", "add", "10.79.0.1/24", "dev", "xb")
	run(a.WAN, "link", "set", "xb", "up")
	run(b.GW, "addr", "add", "10.79.0.2/24", "dev", "x0")
	run(b.GW, "link", "set", "x0", "up")
	run(b.GW, "route", "add", "10.77.0.0/24", "via", "10.79.0.1")
	run(a.GW, "addr", "add", "10.77.0.2/24", "dev", a.Uplinks[0].GWIf)
	run(a.GW, "route", "add", "10.79.0.0/24", "via", "10.77.0.1")
	// The router forwards, and takes B's replies from the VIP (whose
	// subnet is on its other side) without a reverse path check.
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"}, {"net.ipv4.conf.xb.rp_filter", "0"}, {"net.ipv4.conf.up0.rp_filter", "0"}} {
		if err := a.WAN.SetSysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	common := []string{"--allow-uid", "0", "--allow-uid", "33", "--vip", "up0=" + vip4}
	up := harness.DefaultUplinks(a)
	link := func(addr string) string {
		if gue != 0 {
			return fmt.Sprintf("tunnel4=%s,gue=%d", addr, gue)
		}
		return "tunnel4=" + addr
	}
	up[0].Link = link("10.77.0.2")
	isoA := harness.StartIsolator(t, a, harness.Options{INS: 1, Uplinks: up,
		Args: append(common, "--remote", "up0=hostb,10.79.0.2,1")})
	isoB := harness.StartIsolator(t, b, harness.Options{INS: 2, Uplinks: []harness.UplinkSpec{
		{Interface: "x0", Pool4: "10.79.0.10/24", Gateway4: "10.79.0.1", Link: link("10.79.0.2")}}, Args: common})
	whoNginx(t, a.App, isoA, "A")
	whoNginx(t, b.App, isoB, "B")
	ea := &env{tp: a, iso: isoA}
	eb := &env{tp: b, iso: isoB}
	deadline := time.Now().Add(15 * time.Second)
	for {
		ms := ea.members(t)
		r, ok := ms[100001]
		if ok && r.State == "up" && r.Remote == "10.79.0.2" && ms[1].State == "up" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host A's pool %v: want INS 1 and remote host 100001 (10.79.0.2) up", ms)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := ea.cli(t, "lb", "status"); !strings.Contains(out, "remote-hostb via 10.79.0.2") {
		t.Errorf("lb status does not show the remote host:\n%s", out)
	}
	eb.waitMembers(t, 10*time.Second, map[int]string{1: "up", 2: "up"})

	// n connections, each its own curl transfer: who answered.
	who := func(n int) map[string]int {
		t.Helper()
		args := []string{"-sS", "--max-time", "10", "-H", "Connection: close", "-w", "\n"}
		for range n {
			args = append(args, "http://"+vip4+"/who")
		}
		out, err := a.WAN.Command(ctx, "curl", args...).Output()
		if err != nil {
			t.Fatalf("curl through the VIP: %v: %s", err, out)
		}
		count := map[string]int{}
		for _, l := range strings.Fields(string(out)) {
			count[l]++
		}
		t.Logf("answers: %v", count)
		return count
	}
	// About half answered by each host, in the encapsulation asked for.
	before := eb.members(t)
	stopCapture := make(chan struct{})
	ipip, gueFrames, captured := tunnelFrames(t, a.WAN, "xb", gue, stopCapture)
	count := who(200)
	close(stopCapture)
	<-captured
	t.Logf("frames to host B: %d IP-in-IP, %d GUE", *ipip, *gueFrames)
	if gue == 0 && (*ipip == 0 || *gueFrames != 0) || gue != 0 && (*gueFrames == 0 || *ipip != 0) {
		t.Errorf("frames to host B: %d IP-in-IP, %d GUE to port %d; want only the one asked for", *ipip, *gueFrames, gue)
	}
	if count["A"]+count["B"] != 200 || count["A"] < 60 || count["B"] < 60 {
		t.Fatalf("200 transfers answered %v: want all, about half by each host", count)
	}
	after := eb.members(t)
	var onB uint64
	for id := range after {
		onB += after[id].NewFlows - before[id].NewFlows
	}
	if onB < uint64(count["B"]) {
		t.Errorf("host B's balancer counted %d new flows for %d connections it served", onB, count["B"])
	}

	// Host B unreachable: after three unanswered probes A gives it no new
	// flows; once it answers again it gets them again.
	remoteState := func(want string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for ea.members(t)[100001].State != want {
			if time.Now().After(deadline) {
				t.Fatalf("remote host %s 15 s on, want %s", ea.members(t)[100001].State, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Host A's probes are answered: B stays up well past three probes.
	time.Sleep(4 * time.Second)
	if st := ea.members(t)[100001].State; st != "up" {
		t.Fatalf("remote host B, reachable, is %s", st)
	}
	run(b.GW, "link", "set", "x0", "down")
	remoteState("draining")
	if c := who(50); c["A"] != 50 {
		t.Fatalf("with host B unreachable and drained, 50 transfers answered %v, want all by A", c)
	}
	run(b.GW, "link", "set", "x0", "up")
	run(b.GW, "route", "replace", "10.77.0.0/24", "via", "10.79.0.1")
	remoteState("up")
	deadline = time.Now().Add(20 * time.Second)
	for c := who(50); c["B"] == 0 || c["A"]+c["B"] != 50; c = who(50) {
		// B's INS take their uplink back once they see its carrier.
		if time.Now().After(deadline) {
			t.Fatalf("host B back: 50 transfers answered %v, want all, some by B", c)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
