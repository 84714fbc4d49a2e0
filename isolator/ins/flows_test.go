package ins

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

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
	m := newMemNet(t, "wrr", 1, 1, -1)
	srv := NewServer(1, m.ins, nil, slog.Default())
	t.Cleanup(srv.eng.Stop)
	srv.EnableFlows(flowtable.Config{EndGrace: 100 * time.Millisecond})
	const group = 77
	rep := srv.socket(group, &msgproto.Socket{Domain: unix.AF_INET, SockType: unix.SOCK_STREAM}, nil)
	id := SockID(rep.(*msgproto.SocketReply).Sock & localMask)
	local := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.2"), 80)
	if e := srv.eng.Bind(id, netip.AddrPortFrom(netip.IPv4Unspecified(), 80)); e != 0 {
		t.Fatalf("bind: %v", e)
	}
	lfd, ins := socketpair(t, unix.SOCK_SEQPACKET)
	if e := srv.eng.Listen(id, 8, ins); e != 0 {
		t.Fatalf("listen: %v", e)
	}

	const request, response = 3000, 200_000
	c, err := gonet.DialTCP(m.wan, tcpip.FullAddress{Addr: tcpAddr(local.Addr()), Port: 80}, ipv4.ProtocolNumber)
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
		writeAll(appFD, make([]byte, response))
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
	waitFor(t, 5*time.Second, func() bool {
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
	m := newMemNet(t, "wrr", 1, 1, -1)
	srv := NewServer(1, m.ins, nil, slog.Default())
	t.Cleanup(srv.eng.Stop)
	srv.EnableFlows(flowtable.Config{Disable: true})
	if srv.Flows() != nil || m.ins.taps.chain.Load() != nil {
		t.Fatal("accounting disabled, yet a table or tap is installed")
	}
}
