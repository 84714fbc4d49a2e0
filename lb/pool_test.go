package lb

import (
	"encoding/binary"
	"errors"
	"math"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/mpshim/mpshim/lb/xdp"
	"github.com/mpshim/mpshim/test/topo"
)

var (
	vip    = netip.MustParseAddr("10.99.0.1")
	vipMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
)

func mac(id int) net.HardwareAddr { return net.HardwareAddr{0x02, 0xbb, 0, 0, 0, byte(id)} }

// tcpFrame is an Ethernet/IPv4/TCP frame to the VIP (checksums zero: the
// program does not read them).
func tcpFrame(src netip.Addr, sport uint16, flags byte) []byte {
	f := make([]byte, 14+20+20)
	copy(f[0:6], vipMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	ip[8], ip[9] = 64, 6
	s, d := src.As4(), vip.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	tcp[12], tcp[13] = 5<<4, flags
	return f
}

func newPool(t *testing.T) (*Pool, *xdp.Balancer) {
	t.Helper()
	topo.RequireRoot(t)
	bal, err := xdp.New(xdp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bal.Close() })
	if err := bal.AddVIP(vip, vipMAC); err != nil {
		t.Fatal(err)
	}
	return NewPool(bal, 0), bal
}

// steer runs a frame through the program and returns the INS id whose MAC
// it got.
func steer(t *testing.T, bal *xdp.Balancer, f []byte) int {
	t.Helper()
	out := make([]byte, len(f)+256)
	opts := &ebpf.RunOptions{Data: f, DataOut: out}
	v, err := bal.Program().Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	if v != xdp.ActionPass || opts.DataOut[1] != 0xbb {
		t.Fatalf("verdict %d, MAC %v", v, net.HardwareAddr(opts.DataOut[:6]))
	}
	return int(opts.DataOut[5])
}

// TestPool: spawn, weights, drain and kill through the pool show in its
// status and in where the program sends flows.
func TestPool(t *testing.T) {
	p, bal := newPool(t)
	for id := 1; id <= 3; id++ {
		if err := p.Add(Member{ID: id, MAC: mac(id), Weight: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Add(Member{ID: 2, MAC: mac(2), Weight: 1}); err == nil {
		t.Fatal("INS 2 added twice")
	}
	for _, bad := range []Member{{ID: 9, MAC: mac(9)}, {ID: 9, MAC: net.HardwareAddr{1, 2}, Weight: 1}} {
		if err := p.Add(bad); err == nil {
			t.Fatalf("Add(%+v) accepted", bad)
		}
	}
	if err := p.SetWeight(3, 2); err != nil {
		t.Fatal(err)
	}
	if err := p.SetWeight(7, 2); !errors.Is(err, ErrUnknown) {
		t.Fatalf("SetWeight of an unknown INS: %v", err)
	}
	if _, err := p.Status(); err != nil { // starts the rate clock
		t.Fatal(err)
	}
	// 400 flows: SYN then ACK, so each is established.
	client := netip.MustParseAddr("10.1.0.1")
	flows := map[uint16]int{}
	for port := uint16(1000); port < 1400; port++ {
		steer(t, bal, tcpFrame(client, port, 0x02))
		flows[port] = steer(t, bal, tcpFrame(client, port, 0x10))
	}
	time.Sleep(10 * time.Millisecond)
	st, err := p.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 3 {
		t.Fatalf("status of %d INS", len(st))
	}
	conns := 0
	for _, m := range st {
		want := float64(m.Weight) / 4
		if math.Abs(m.Share-want) > 0.01 || m.State != Up {
			t.Errorf("INS %d: share %.4f state %s, want %.2f up", m.ID, m.Share, m.State, want)
		}
		if m.NewFlowsPerSec <= 0 {
			t.Errorf("INS %d: %v new flows/s after 400 new flows", m.ID, m.NewFlowsPerSec)
		}
		conns += m.Connections
	}
	if conns != 400 {
		t.Errorf("%d connections in the status, 400 established", conns)
	}
	var newFlows uint64
	for _, m := range st {
		newFlows += m.NewFlows
	}
	if newFlows != 400 {
		t.Errorf("%d new flows in the status, 400 sent", newFlows)
	}

	// Drain 3: no new flows for it, its flows stay; kill 1: its flows move.
	if err := p.Drain(3); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(1); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(1); !errors.Is(err, ErrUnknown) {
		t.Fatalf("second Remove: %v", err)
	}
	for port, was := range flows {
		got := steer(t, bal, tcpFrame(client, port, 0x10))
		switch {
		case was == 1 && got == 1:
			t.Fatalf("flow %d still reaches the removed INS", port)
		case was != 1 && got != was:
			t.Fatalf("flow %d moved from INS %d to %d", port, was, got)
		}
	}
	for port := uint16(5000); port < 5200; port++ {
		if got := steer(t, bal, tcpFrame(client, port, 0x02)); got != 2 {
			t.Fatalf("new flow went to INS %d with only INS 2 up", got)
		}
	}
	st, err = p.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st[0].ID != 2 || st[1].ID != 3 || st[1].State != Draining || st[1].Share != 0 || st[0].Share != 1 {
		t.Fatalf("status after drain and kill: %+v", st)
	}
	if ms := p.Members(); len(ms) != 2 || ms[0].ID != 2 || ms[0].State != Up || ms[1].ID != 3 || ms[1].State != Draining {
		t.Fatalf("members after drain and kill: %+v", ms)
	}
	// A new MAC for INS 2: its flows get it.
	if err := p.SetMAC(2, mac(9)); err != nil {
		t.Fatal(err)
	}
	if err := p.SetMAC(2, net.HardwareAddr{1}); err == nil {
		t.Fatal("SetMAC with a 1-byte MAC accepted")
	}
	if got := steer(t, bal, tcpFrame(client, 5000, 0x10)); got != 9 {
		t.Fatalf("INS 2's flow went to MAC of %d after SetMAC", got)
	}
	if err := p.SetMAC(2, mac(2)); err != nil {
		t.Fatal(err)
	}
	if err := p.Undrain(3); err != nil {
		t.Fatal(err)
	}
	st, _ = p.Status()
	if st[1].State != Up || math.Abs(st[1].Share-2.0/3) > 0.01 {
		t.Fatalf("undrained INS 3: %+v", st[1])
	}
}
