package ins

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/resolve"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/mpshim/mpshim/msgproto"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/flowtable"
)

// TestFlowAccounting serves a connection from the WAN through an INS
// listener owned by a socket group and checks the flow the table reports:
// both directions' payload, the initiator, the uplink, the end and the
// owner.
func TestFlowAccounting(t *testing.T) {
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	srv := NewServer(1, m.INS, resolve.Config{}, nil, slog.Default())
	t.Cleanup(srv.eng.Stop)
	srv.EnableFlows(flowtable.Config{EndGrace: 100 * time.Millisecond})
	const group = 77
	rep := srv.socket(group, &msgproto.Socket{Domain: unix.AF_INET, SockType: unix.SOCK_STREAM}, nil)
	id, _ := srv.sock(group, rep.(*msgproto.SocketReply).Sock)
	local := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.2"), 80)
	if e := srv.eng.Bind(id, netip.AddrPortFrom(netip.IPv4Unspecified(), 80)); e != 0 {
		t.Fatalf("bind: %v", e)
	}
	lfd, ins := instest.Socketpair(t, unix.SOCK_SEQPACKET)
	if e := srv.eng.Listen(id, 8, ins); e != 0 {
		t.Fatalf("listen: %v", e)
	}

	const request, response = 3000, 200_000
	c, err := gonet.DialTCP(m.WAN, tcpip.FullAddress{Addr: instest.TCPAddr(local.Addr()), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	// The accept notification (a msgproto AcceptNotify) carries the
	// connection's stream end.
	buf, oob := make([]byte, 256), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(lfd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	scms, _ := unix.ParseSocketControlMessage(oob[:oobn])
	if len(scms) != 1 {
		t.Fatalf("accept: %d control messages", len(scms))
	}
	fds, err := unix.ParseUnixRights(&scms[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("accept: rights %v %v", fds, err)
	}
	appFD := fds[0]
	go func() {
		defer unix.Close(appFD)
		buf := make([]byte, request)
		for got := 0; got < request; {
			n, err := unix.Read(appFD, buf[got:])
			if n <= 0 || err != nil {
				return
			}
			got += n
		}
		instest.WriteAll(appFD, make([]byte, response))
	}()
	if _, err := c.Write(make([]byte, request)); err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, c)
	c.Close()
	if n != response {
		t.Fatalf("read %d bytes, want %d", n, response)
	}

	var flow *flowtable.Record
	instest.WaitFor(t, 5*time.Second, func() bool {
		bt, err := flowtable.DecodeBatch(srv.flows.Collect(time.Now(), maxFlowBatch, srv.flowOwners))
		if err != nil {
			t.Fatal(err)
		}
		for i := range bt.Records {
			if r := &bt.Records[i]; r.Key.DstPort == 80 && r.End != netflow.EndNone {
				flow = r
			}
		}
		return flow != nil
	})
	if flow.Fwd.Payload != request || flow.Rev.Payload != response {
		t.Errorf("payload fwd %d rev %d, want %d and %d", flow.Fwd.Payload, flow.Rev.Payload, request, response)
	}
	if !flow.Inbound || flow.Key.Dst != local.Addr() || flow.Uplink != "a" || flow.End != netflow.EndOfFlow {
		t.Errorf("flow %+v: want inbound to %v on uplink a, ended by FIN", flow, local)
	}
	if flow.Group != group {
		t.Errorf("owner group %d, want %d", flow.Group, group)
	}
	if f := flow.Fwd.TCPFlags | flow.Rev.TCPFlags; f&(netflow.TCPSyn|netflow.TCPFin) != netflow.TCPSyn|netflow.TCPFin {
		t.Errorf("flags %v", f)
	}
	// IP bytes: payload plus at least a 40-byte header per packet.
	if flow.Rev.Bytes < response+40*flow.Rev.Packets {
		t.Errorf("rev bytes %d for %d packets", flow.Rev.Bytes, flow.Rev.Packets)
	}
}

func TestFlowsDisabled(t *testing.T) {
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	srv := NewServer(1, m.INS, resolve.Config{}, nil, slog.Default())
	t.Cleanup(srv.eng.Stop)
	srv.EnableFlows(flowtable.Config{Disable: true})
	if srv.Flows() != nil || m.INS.Tapped() {
		t.Fatal("accounting disabled, yet a table or tap is installed")
	}
}

// BenchmarkStreamThroughAccounting moves 8 MiB per operation between the
// WAN stack and a connection of the INS stack (in one process, over
// in-memory links), into the INS ("in") and out of it ("out"), with and
// without the flow table. Both stacks' work is in the measure, so the
// difference relative to the INS alone is larger than it appears; the real
// INS also pays for AF_PACKET and its app socketpairs, which are not here.
func BenchmarkStreamThroughAccounting(b *testing.B) {
	for _, dir := range []string{"in", "out"} {
		for _, acct := range []bool{false, true} {
			name := dir + "/off"
			if acct {
				name = dir + "/on"
			}
			b.Run(name, func(b *testing.B) { streamBench(b, dir == "out", acct) })
		}
	}
}

func streamBench(b *testing.B, out, acct bool) {
	m := instest.NewMemNet(b, "wrr", 1, 1, -1)
	if acct {
		m.INS.AddTap(flowtable.New(flowtable.Config{}))
	}
	ln, err := gonet.ListenTCP(m.WAN, tcpip.FullAddress{Addr: instest.TCPAddr(instest.ServerAddr), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	const chunk = 8 << 20
	var received atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10)
				for {
					if out {
						n, err := c.Read(buf)
						received.Add(int64(n))
						if err != nil {
							return
						}
					} else if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	nic, local, err := m.INS.ChooseUplink(netip.AddrPortFrom(instest.ServerAddr, 80), 6)
	if err != nil {
		b.Fatal(err)
	}
	c, err := gonet.DialTCPWithBind(context.Background(), m.INS.Stack(), tcpip.FullAddress{NIC: nic, Addr: local},
		tcpip.FullAddress{Addr: instest.TCPAddr(instest.ServerAddr), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	b.SetBytes(chunk)
	// CPU time (of both stacks) per MB says more than wall time on a
	// machine shared with other work.
	cpu := func() time.Duration {
		var ru unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.ResetTimer()
	cpu0 := cpu()
	for range b.N {
		for done := 0; done < chunk; {
			var n int
			var err error
			if out {
				n, err = c.Write(buf[:min(len(buf), chunk-done)])
			} else {
				n, err = c.Read(buf[:min(len(buf), chunk-done)])
			}
			if err != nil {
				b.Fatal(err)
			}
			done += n
		}
	}
	for out && received.Load() < int64(b.N)*chunk {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(cpu()-cpu0)/float64(b.N)/(chunk/1e6)/1e3, "cpu-µs/MB")
}
