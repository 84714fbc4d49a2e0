package link_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/mpshim/mpshim/netflow"
)

// recordTap remembers what it saw and drops inbound packets from a source.
type recordTap struct {
	mu    sync.Mutex
	seen  map[netflow.Direction][]netflow.Packet
	links map[string]bool
	drop  netip.Addr
}

func (r *recordTap) Packet(uplink string, dir netflow.Direction, p *netflow.Packet) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen, r.links = map[netflow.Direction][]netflow.Packet{}, map[string]bool{}
	}
	r.seen[dir] = append(r.seen[dir], *p)
	r.links[uplink] = true
	return !(dir == netflow.In && p.Src == r.drop)
}

func (r *recordTap) tcp(dir netflow.Direction, port uint16) (pkts, bytes int, flags uint8) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.seen[dir] {
		if p.Proto == netflow.ProtoTCP && (p.SrcPort == port || p.DstPort == port) {
			pkts++
			bytes += p.Len
			flags |= p.TCPFlags
		}
	}
	return
}

func TestTapSeesAndDrops(t *testing.T) {
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	rec := &recordTap{}
	m.INS.AddTap(rec)

	ln, err := gonet.ListenTCP(m.WAN, tcpip.FullAddress{Addr: instest.TCPAddr(instest.ServerAddr), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("wan listen: %v", err)
	}
	defer ln.Close()
	const payload = 100_000
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write(make([]byte, payload))
		c.Close()
	}()
	dial := func(timeout time.Duration) (*gonet.TCPConn, error) {
		nic, local, err := m.INS.ChooseUplink(netip.AddrPortFrom(instest.ServerAddr, 80), 6)
		if err != nil {
			t.Fatalf("ChooseUplink: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return gonet.DialTCPWithBind(ctx, m.INS.Stack(), tcpip.FullAddress{NIC: nic, Addr: local},
			tcpip.FullAddress{Addr: instest.TCPAddr(instest.ServerAddr), Port: 80}, ipv4.ProtocolNumber)
	}
	c, err := dial(5 * time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	got := 0
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		got += n
		if err != nil {
			break
		}
	}
	c.Close()
	if got != payload {
		t.Fatalf("read %d bytes, want %d", got, payload)
	}
	instest.WaitFor(t, 2*time.Second, func() bool { _, _, f := rec.tcp(netflow.Out, 80); return f&netflow.TCPFin != 0 })
	inPkts, inBytes, inFlags := rec.tcp(netflow.In, 80)
	outPkts, _, outFlags := rec.tcp(netflow.Out, 80)
	if inBytes < payload || inBytes > payload+inPkts*80 {
		t.Errorf("inbound IP bytes %d over %d packets, want %d payload plus headers", inBytes, inPkts, payload)
	}
	if inFlags&(netflow.TCPSyn|netflow.TCPAck|netflow.TCPFin) != netflow.TCPSyn|netflow.TCPAck|netflow.TCPFin {
		t.Errorf("inbound TCP flags %#x, want SYN, ACK and FIN", inFlags)
	}
	if outPkts == 0 || outFlags&netflow.TCPSyn == 0 {
		t.Errorf("outbound: %d packets, flags %#x; want the SYN at least", outPkts, outFlags)
	}
	if len(rec.links) == 0 {
		t.Error("tap saw no uplink names")
	}

	// Dropped on the way in: the SYN-ACK never reaches TCP.
	rec.mu.Lock()
	rec.drop = instest.ServerAddr
	rec.mu.Unlock()
	if c, err := dial(500 * time.Millisecond); err == nil {
		c.Close()
		t.Fatal("dial succeeded although the tap drops every reply")
	}
}
