package mitigate_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/isolator/ins/tune"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/mitigate"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/rules"
)

// insAddr is the INS's address on memNet uplink "a"; wanAddr the peer's.
var (
	insAddr = netip.MustParseAddr("10.1.0.2")
	wanAddr = netip.MustParseAddr("10.1.0.1")
)

// mitNet is a memNet INS with an engine and the mitigation attached, as
// RunProcess sets them up.
type mitNet struct {
	*instest.MemNet
	eng *engine.Engine
	g   *mitigate.Mitigator
	set rules.Set
	tv  uint64
	cur tune.Tuning
}

func newMitNet(t *testing.T) *mitNet {
	t.Helper()
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	g, err := mitigate.New(1, mitigate.Mitigation{}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	m.INS.AddTap(g.Tap())
	eng := engine.New(m.INS.Stack(), m.INS, engine.Options{})
	t.Cleanup(eng.Stop)
	if err := g.Attach(m.INS.Stack(), eng); err != nil {
		t.Fatal(err)
	}
	return &mitNet{MemNet: m, eng: eng, g: g}
}

func (n *mitNet) do(t *testing.T, req *mitigate.Request) *mitigate.Reply {
	t.Helper()
	r, err := n.g.Handle(req)
	if err != nil {
		t.Fatalf("mitigate %+v: %v", req, err)
	}
	return r
}

func (n *mitNet) add(t *testing.T, r rules.Rule) rules.Rule {
	t.Helper()
	r, err := n.set.Add(r)
	if err != nil {
		t.Fatal(err)
	}
	set := n.set.Clone()
	n.do(t, &mitigate.Request{Rules: &set})
	return r
}

func (n *mitNet) remove(t *testing.T, id uint64) {
	t.Helper()
	if _, err := n.set.Remove(id); err != nil {
		t.Fatal(err)
	}
	set := n.set.Clone()
	n.do(t, &mitigate.Request{Rules: &set})
}

func (n *mitNet) tune(t *testing.T, kv ...string) *mitigate.Reply {
	t.Helper()
	tu, err := tune.Parse(kv)
	if err != nil {
		t.Fatal(err)
	}
	n.tv++
	n.cur = tune.Merge(n.cur, tu)
	return n.do(t, &mitigate.Request{Tune: &n.cur, TuneVersion: n.tv})
}

func (n *mitNet) stats(t *testing.T, id uint64) rules.Stats {
	t.Helper()
	for _, s := range n.do(t, nil).Rules {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("no stats for rule %d", id)
	return rules.Stats{}
}

// wanDial connects from the WAN side to the INS address.
func (n *mitNet) wanDial(timeout time.Duration) (*gonet.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return gonet.DialContextTCP(ctx, n.WAN, tcpip.FullAddress{Addr: instest.TCPAddr(insAddr), Port: 80}, ipv4.ProtocolNumber)
}

// accept takes the next connection from an engine listener's app fd.
func accept(t *testing.T, lfd int, timeout time.Duration) instest.AcceptMsg {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(pfd, int(timeout/time.Millisecond)); n != 1 {
		t.Fatalf("no connection to accept within %v", timeout)
	}
	m, err := instest.RecvAccept(t, lfd, 0)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	return m
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "aborted"))
}

// TestBlockAndReset: a block rule stops new connections from the prefix
// and silences existing ones; a reset of the prefix ends them with a RST
// on the wire and a reset on the app's socket; removing the rule restores
// service. Drops are counted on the rule.
func TestBlockAndReset(t *testing.T) {
	n := newMitNet(t)
	lid, lfd := instest.Listen(t, n.eng, netip.AddrPortFrom(insAddr, 80), 16)
	_ = lid

	c, err := n.wanDial(2 * time.Second)
	if err != nil {
		t.Fatalf("dial before any rule: %v", err)
	}
	defer c.Close()
	am := accept(t, lfd, 2*time.Second)
	defer unix.Close(am.FD)
	if am.Peer.Addr() != wanAddr {
		t.Fatalf("peer %v, want %v", am.Peer, wanAddr)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if k, err := unix.Read(am.FD, buf); err != nil || string(buf[:k]) != "ping" {
		t.Fatalf("app read %q, %v", buf[:k], err)
	}

	rule := n.add(t, rules.Rule{Action: rules.Block, Prefix: netip.MustParsePrefix("10.1.0.0/24")})
	if c2, err := n.wanDial(300 * time.Millisecond); err == nil {
		c2.Close()
		t.Fatal("a new connection from the blocked prefix succeeded")
	}
	// The established connection is silenced both ways.
	unix.Write(am.FD, []byte("pong"))
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if k, err := c.Read(buf); err == nil {
		t.Fatalf("peer read %q through a block", buf[:k])
	}
	if st := n.stats(t, rule.ID); st.Drops == 0 || st.Drops != st.Packets {
		t.Fatalf("rule counters %+v: want drops, all of the matched packets", st)
	}

	// Reset: the peer gets the RST (it passes the block) and the app's
	// stream ends with ECONNRESET pending.
	pfx := netip.MustParsePrefix("10.1.0.0/24")
	if r := n.do(t, &mitigate.Request{ResetPeers: &pfx}); r.Reset != 1 {
		t.Fatalf("reset %d connections, want 1", r.Reset)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if !isReset(err) {
			t.Fatalf("peer read after reset: %v, want a connection reset", err)
		}
		break
	}
	unix.SetNonblock(am.FD, false)
	if k, err := unix.Read(am.FD, buf); k != 0 || err != nil {
		t.Fatalf("app read after reset: %d, %v; want EOF", k, err)
	}
	instest.WaitFor(t, 2*time.Second, func() bool {
		v, errno := n.eng.Getsockopt(am.Sock, unix.SOL_SOCKET, unix.SO_ERROR, 4)
		return errno == 0 && instest.LeU32(v) == uint32(unix.ECONNRESET)
	})

	n.remove(t, rule.ID)
	c3, err := n.wanDial(2 * time.Second)
	if err != nil {
		t.Fatalf("dial after unblock: %v", err)
	}
	c3.Close()
	unix.Close(accept(t, lfd, 2*time.Second).FD)
}

func TestResetFlow(t *testing.T) {
	n := newMitNet(t)
	_, lfd := instest.Listen(t, n.eng, netip.AddrPortFrom(insAddr, 80), 16)
	var conns []*gonet.TCPConn
	for range 2 {
		c, err := n.wanDial(2 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		defer unix.Close(accept(t, lfd, 2*time.Second).FD)
	}
	local := netip.MustParseAddrPort(conns[0].LocalAddr().String())
	key := netflow.Key{Src: local.Addr(), Dst: insAddr, SrcPort: local.Port(), DstPort: 80, Proto: netflow.ProtoTCP}
	id := netflow.FlowID(1, key)
	// The ID is the same whichever direction it was computed from.
	if netflow.FlowID(1, key.Reverse()) != id {
		t.Fatal("flow id depends on direction")
	}
	if r := n.do(t, &mitigate.Request{ResetFlow: id}); r.Reset != 1 {
		t.Fatalf("reset %s: %d connections, want 1", id, r.Reset)
	}
	buf := make([]byte, 8)
	conns[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := conns[0].Read(buf); !isReset(err) {
		t.Fatalf("reset flow: peer read %v, want a reset", err)
	}
	// The other connection lives on.
	conns[1].SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := conns[1].Read(buf); isReset(err) {
		t.Fatalf("the other flow was reset too: %v", err)
	}
	if r := n.do(t, &mitigate.Request{ResetFlow: id}); r.Reset != 0 {
		t.Fatalf("second reset of %s: %d, want 0 (not found)", id, r.Reset)
	}
	for _, bad := range []string{"2-000000000001", "1-xyz", "flow"} {
		if _, err := n.g.Handle(&mitigate.Request{ResetFlow: bad}); err == nil {
			t.Errorf("reset %q: no error", bad)
		}
	}
}

// countTap counts ICMP echo replies leaving the INS.
type countTap struct{ replies atomic.Int64 }

func (c *countTap) Packet(_ string, dir netflow.Direction, p *netflow.Packet) bool {
	if dir == netflow.Out && p.Proto == netflow.ProtoICMP && p.DstPort>>8 == uint16(header.ICMPv4EchoReply) {
		c.replies.Add(1)
	}
	return true
}

// TestLimitPingFlood floods the INS with echo requests from the WAN side
// under a pps limit: only the burst plus the rate pass, and the rule
// counts every request and every drop.
func TestLimitPingFlood(t *testing.T) {
	n := newMitNet(t)
	replies := &countTap{}
	n.INS.AddTap(replies)
	const pps, burst, sent = 100, 20, 1000
	rule := n.add(t, rules.Rule{Action: rules.Limit, Prefix: netip.MustParsePrefix("10.1.0.0/16"), PPS: pps, Burst: burst})

	var wq waiter.Queue
	ep, terr := n.WAN.NewEndpoint(icmp.ProtocolNumber4, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatalf("ping endpoint: %s", terr)
	}
	defer ep.Close()
	echo := make([]byte, header.ICMPv4MinimumSize+8)
	header.ICMPv4(echo).SetType(header.ICMPv4Echo)
	to := tcpip.FullAddress{Addr: instest.TCPAddr(insAddr)}
	start := time.Now()
	for i := range sent {
		header.ICMPv4(echo).SetSequence(uint16(i))
		if _, err := ep.Write(bytes.NewReader(echo), tcpip.WriteOptions{To: &to}); err != nil {
			t.Fatalf("echo %d: %s", i, err)
		}
	}
	elapsed := time.Since(start)
	var st rules.Stats
	instest.WaitFor(t, 2*time.Second, func() bool { st = n.stats(t, rule.ID); return st.Packets == sent })
	passed := int64(st.Packets - st.Drops)
	most := int64(burst + pps*elapsed.Seconds() + 1)
	if passed < burst || passed > most {
		t.Fatalf("%d of %d echo requests passed in %v, want %d..%d", passed, sent, elapsed, burst, most)
	}
	instest.WaitFor(t, 2*time.Second, func() bool { return replies.replies.Load() == passed })
	t.Logf("%d echo requests in %v: %d passed, %d dropped", sent, elapsed, passed, st.Drops)
}

// TestTuneMaxConnPerSource: with max-conn-per-src=2 a third concurrent
// connection from the same address is reset at accept; closing one lets
// the next in.
func TestTuneMaxConnPerSource(t *testing.T) {
	n := newMitNet(t)
	_, lfd := instest.Listen(t, n.eng, netip.AddrPortFrom(insAddr, 80), 16)
	r := n.tune(t, "max-conn-per-src=2")
	if r.Tuning[tune.KeyMaxConnPerSrc] != "2" {
		t.Fatalf("effective tuning %v", r.Tuning)
	}
	var fds []int
	for range 2 {
		c, err := n.wanDial(2 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fds = append(fds, accept(t, lfd, 2*time.Second).FD)
	}
	// The handshake completes before accept, so the reset may come
	// before or after the dial returns.
	c3, err := n.wanDial(2 * time.Second)
	if err == nil {
		defer c3.Close()
		c3.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c3.Read(make([]byte, 1))
	}
	if !isReset(err) {
		t.Fatalf("third connection: %v, want a reset", err)
	}
	if got := n.eng.ConnRefused(); got != 1 {
		t.Fatalf("ConnRefused = %d, want 1", got)
	}
	unix.Close(fds[0])
	instest.WaitFor(t, 3*time.Second, func() bool {
		c, err := n.wanDial(time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err = c.Read(make([]byte, 1))
		return !isReset(err)
	})
	unix.Close(fds[1])
	// Lifting the limit: any number again.
	n.tune(t, "max-conn-per-src=default")
	if n.eng.MaxConnPerSource() != 0 {
		t.Fatal("limit not lifted")
	}
}

func TestTuneStackOptions(t *testing.T) {
	n := newMitNet(t)
	_, _ = instest.Listen(t, n.eng, netip.AddrPortFrom(insAddr, 80), 1000)
	r := n.tune(t, "rcvbuf=256K", "rcvbuf-max=4M", "sndbuf=64K", "syn-cookies=always", "backlog=100")
	var rcv tcpip.TCPReceiveBufferSizeRangeOption
	var snd tcpip.TCPSendBufferSizeRangeOption
	var cookies tcpip.TCPAlwaysUseSynCookies
	ns := n.INS.Stack()
	ns.TransportProtocolOption(tcp.ProtocolNumber, &rcv)
	ns.TransportProtocolOption(tcp.ProtocolNumber, &snd)
	ns.TransportProtocolOption(tcp.ProtocolNumber, &cookies)
	if rcv.Default != 256<<10 || rcv.Max != 4<<20 || snd.Default != 64<<10 || snd.Max != 8<<20 || !bool(cookies) {
		t.Fatalf("stack options rcv %+v snd %+v cookies %v", rcv, snd, cookies)
	}
	if r.Tuning[tune.KeyRcvBuf] != "262144" || r.Tuning[tune.KeySynCookies] != "always" || r.Tuning[tune.KeyBacklog] != "100" {
		t.Fatalf("reply tuning %v", r.Tuning)
	}
	if got := n.eng.BacklogCap(); got != 100 {
		t.Fatalf("backlog 1000 clamps to %d, want 100", got)
	}
	// An older tuning version is ignored; an inconsistent one refused.
	stale := tune.Tuning{tune.KeyRcvBuf: "8192"}
	n.do(t, &mitigate.Request{Tune: &stale, TuneVersion: n.tv})
	ns.TransportProtocolOption(tcp.ProtocolNumber, &rcv)
	if rcv.Default != 256<<10 {
		t.Fatalf("stale tuning applied: %+v", rcv)
	}
	bad := tune.Tuning{tune.KeyRcvBuf: "8388608", tune.KeyRcvBufMax: "4194304"}
	if _, err := n.g.Handle(&mitigate.Request{Tune: &bad, TuneVersion: n.tv + 1}); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("inconsistent tuning: %v", err)
	}
	// Back to every default.
	n.tv += 2
	none := tune.Tuning{}
	n.do(t, &mitigate.Request{Tune: &none, TuneVersion: n.tv})
	ns.TransportProtocolOption(tcp.ProtocolNumber, &rcv)
	ns.TransportProtocolOption(tcp.ProtocolNumber, &cookies)
	if rcv.Default != tune.Base.RcvBuf || rcv.Max != tune.Base.RcvBufMax || bool(cookies) {
		t.Fatalf("defaults not restored: %+v cookies %v", rcv, cookies)
	}
}

// TestTuningBaseMatchesStack: the defaults tunings return to are what a
// new INS stack and engine use.
func TestTuningBaseMatchesStack(t *testing.T) {
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	var rcv tcpip.TCPReceiveBufferSizeRangeOption
	var snd tcpip.TCPSendBufferSizeRangeOption
	var cookies tcpip.TCPAlwaysUseSynCookies
	ns := m.INS.Stack()
	ns.TransportProtocolOption(tcp.ProtocolNumber, &rcv)
	ns.TransportProtocolOption(tcp.ProtocolNumber, &snd)
	ns.TransportProtocolOption(tcp.ProtocolNumber, &cookies)
	got := tune.Values{RcvBuf: rcv.Default, RcvBufMax: rcv.Max, SndBuf: snd.Default, SndBufMax: snd.Max, Backlog: engine.MaxBacklog, SynCookies: bool(cookies)}
	if got != tune.Base || rcv.Min != tune.MinBuf || snd.Min != tune.MinBuf {
		t.Fatalf("stack defaults %+v (min %d/%d), tuning base %+v", got, rcv.Min, snd.Min, tune.Base)
	}
}

func TestParseTuning(t *testing.T) {
	cases := []struct {
		args    []string
		want    tune.Tuning
		wantErr string
	}{
		{[]string{"rcvbuf=1M", "sndbuf=65536"}, tune.Tuning{"rcvbuf": "1048576", "sndbuf": "65536"}, ""},
		{[]string{"backlog=128", "max-conn-per-src=0", "syn-cookies=always"}, tune.Tuning{"backlog": "128", "max-conn-per-src": "0", "syn-cookies": "always"}, ""},
		{[]string{"rcvbuf=default"}, tune.Tuning{"rcvbuf": "default"}, ""},
		{[]string{"rcvbuf"}, nil, "key=value"},
		{[]string{"=1"}, nil, "key=value"},
		{[]string{"mtu=1500"}, nil, "unknown key"},
		{[]string{"mtu=default"}, nil, "unknown key"},
		{[]string{"rcvbuf=1K"}, nil, "out of range"},
		{[]string{"rcvbuf=1G"}, nil, "out of range"},
		{[]string{"rcvbuf-max=128M"}, tune.Tuning{"rcvbuf-max": "134217728"}, ""},
		{[]string{"backlog=0"}, nil, "1..65535"},
		{[]string{"backlog=-1"}, nil, "1..65535"},
		{[]string{"max-conn-per-src=2000000"}, nil, "0..1000000"},
		{[]string{"syn-cookies=off"}, nil, "falls back"},
		{[]string{"syn-cookies=maybe"}, nil, "always or auto"},
		{[]string{"backlog=1", "backlog=2"}, nil, "twice"},
	}
	for _, c := range cases {
		got, err := tune.Parse(c.args)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("tune.Parse(%q) = %v, %v; want error containing %q", c.args, got, err, c.wantErr)
			}
			continue
		}
		if err != nil || len(got) != len(c.want) {
			t.Errorf("tune.Parse(%q) = %v, %v; want %v", c.args, got, err, c.want)
			continue
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("tune.Parse(%q)[%s] = %q, want %q", c.args, k, got[k], v)
			}
		}
	}
	m := tune.Merge(tune.Tuning{"rcvbuf": "65536", "backlog": "10"}, tune.Tuning{"rcvbuf": "default", "sndbuf": "8192"})
	if len(m) != 2 || m["backlog"] != "10" || m["sndbuf"] != "8192" {
		t.Fatalf("Merge = %v", m)
	}
	if _, err := (tune.Tuning{"sndbuf": "16777216"}).Values(); err == nil {
		t.Fatal("sndbuf above the default sndbuf-max accepted")
	}
}

func FuzzParseTuning(f *testing.F) {
	for _, s := range []string{"rcvbuf=1M", "backlog=128", "syn-cookies=always", "max-conn-per-src=default", "x=y", "rcvbuf-max=0.5G"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tu, err := tune.Parse(strings.Fields(s))
		if err != nil {
			return
		}
		// What parses either forms a consistent set or says why not.
		v, err := tune.Merge(nil, tu).Values()
		if err != nil && !strings.Contains(err.Error(), "exceeds") {
			t.Fatalf("tune.Parse(%q) = %v, then Values: %v", s, tu, err)
		}
		if err == nil && (v.RcvBuf > v.RcvBufMax || v.Backlog < 1) {
			t.Fatalf("inconsistent values %+v from %q", v, s)
		}
	})
}
