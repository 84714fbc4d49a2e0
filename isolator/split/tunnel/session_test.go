package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/split/tunnel/tunneltest"

	"github.com/mpshim/mpshim/isolator/split/seal"
)

var testNow = time.Unix(1000, 0)

// impaired wraps a real UDP link with the impairments a test asks for:
// random loss, a black hole, and injection of altered or repeated copies of
// what it sends.
type impaired struct {
	Link
	loss      atomic.Uint64 // per million
	blackhole atomic.Bool
	tamper    atomic.Uint64 // every n-th sealed packet also goes out changed
	replay    atomic.Uint64 // every n-th sealed packet also goes out twice
	n         atomic.Uint64
	injected  atomic.Uint64
}

func (l *impaired) WritePacket(b []byte) error {
	if l.blackhole.Load() {
		return nil
	}
	if pm := l.loss.Load(); pm > 0 && mrand.Uint64N(1e6) < pm {
		return nil
	}
	if len(b) > 0 && b[0] == seal.TypeData {
		n := l.n.Add(1)
		// A changed copy goes first, as an attacker on the path would
		// race it ahead of the original.
		if t := l.tamper.Load(); t > 0 && n%t == 0 {
			c := bytes.Clone(b)
			c[seal.HeaderLen+mrand.IntN(len(c)-seal.HeaderLen)] ^= 1 << mrand.IntN(8)
			l.injected.Add(1)
			_ = l.Link.WritePacket(c)
		}
		if r := l.replay.Load(); r > 0 && n%r == 0 {
			l.injected.Add(1)
			defer l.Link.WritePacket(b)
		}
	}
	return l.Link.WritePacket(b)
}

func (l *impaired) ReadPacket(b []byte) (int, error) {
	for {
		n, err := l.Link.ReadPacket(b)
		if err != nil || !l.blackhole.Load() {
			return n, err
		}
	}
}

type pair struct {
	a, b   *Session
	alinks []*impaired
	blinks []*impaired
}

func newPair(t *testing.T, links int, mod func(*Config)) *pair {
	return newPairRaw(t, links, mod, false)
}

// newPairRaw with raw set gives the sessions the UDP links themselves
// (with sendmmsg/recvmmsg batching) instead of the impairment wrappers.
func newPairRaw(t *testing.T, links int, mod func(*Config), raw bool) *pair {
	t.Helper()
	ka, _ := seal.GenerateKeyPair()
	kb, _ := seal.GenerateKeyPair()
	pr := &pair{}
	var la, lb []Link
	for range links {
		x, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		y, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		x.SetRemote(y.LocalAddr())
		y.SetRemote(x.LocalAddr())
		ix, iy := &impaired{Link: x}, &impaired{Link: y}
		pr.alinks, pr.blinks = append(pr.alinks, ix), append(pr.blinks, iy)
		if raw {
			la, lb = append(la, x), append(lb, y)
		} else {
			la, lb = append(la, ix), append(lb, iy)
		}
	}
	ca := Config{Local: ka, Peer: kb.Public, Links: la}
	cb := Config{Local: kb, Peer: ka.Public, Links: lb}
	if mod != nil {
		mod(&ca)
		mod(&cb)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var errB error
	wg.Go(func() { pr.b, errB = Accept(ctx, cb) })
	var err error
	pr.a, err = Dial(ctx, ca)
	wg.Wait()
	if err != nil || errB != nil {
		t.Fatal(err, errB)
	}
	t.Cleanup(func() {
		pr.a.Close()
		pr.b.Close()
	})
	return pr
}

// transfer sends size random bytes from a to b and checks them.
func transfer(t *testing.T, pr *pair, size int, during func(sent int)) time.Duration {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		h := sha256.New()
		_, err := io.CopyN(h, pr.b, int64(size))
		if err == nil && !bytes.Equal(h.Sum(nil), want[:]) {
			err = errors.New("sha256 differs")
		}
		done <- err
	}()
	for off := 0; off < size; off += 256 << 10 {
		if during != nil {
			during(off)
		}
		if _, err := pr.a.Write(data[off:min(off+256<<10, size)]); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		st, c := pr.a.Stats()
		t.Fatalf("transfer stuck: %+v %+v", st, c)
	}
	return time.Since(start)
}

func TestTransferOverThreeLinks(t *testing.T) {
	pr := newPairRaw(t, 3, nil, true)
	d := transfer(t, pr, 32<<20, nil)
	st, c := pr.a.Stats()
	t.Logf("32 MiB in %v (%.0f Mbit/s); counters %+v", d, 32*8*1.048576/d.Seconds(), c)
	used := 0
	for i, p := range st {
		t.Logf("path %d: %+v", i, p)
		if p.DataBytes > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("only %d paths carried data", used)
	}
	// The stream goes on in the other direction too.
	if _, err := pr.b.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(pr.a, buf); err != nil || string(buf) != "back" {
		t.Fatal(err, buf)
	}
}

func TestLossAndBlackhole(t *testing.T) {
	pr := newPair(t, 3, nil)
	pr.alinks[0].loss.Store(20000) // 2 %
	pr.blinks[0].loss.Store(20000)
	var holed bool
	transfer(t, pr, 16<<20, func(sent int) {
		if !holed && sent >= 4<<20 {
			holed = true
			pr.alinks[1].blackhole.Store(true)
			pr.blinks[1].blackhole.Store(true)
		}
	})
	// The transfer may end before the black-holed path's silence is
	// judged (300 ms); it is taken out soon after in any case.
	deadline := time.Now().Add(3 * time.Second)
	st, c := pr.a.Stats()
	for st[1].Up && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		st, c = pr.a.Stats()
	}
	t.Logf("counters %+v", c)
	for i, p := range st {
		t.Logf("path %d: %+v", i, p)
	}
	if c.Retransmits == 0 || c.PathDown == 0 || st[1].Up {
		t.Fatalf("expected retransmissions and path 1 down: %+v %+v", c, st[1])
	}
	// The path comes back when its packets flow again.
	pr.alinks[1].blackhole.Store(false)
	pr.blinks[1].blackhole.Store(false)
	deadline = time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if st, _ := pr.a.Stats(); st[1].Up {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("path 1 did not come back")
}

func TestTamperAndReplayDropped(t *testing.T) {
	pr := newPair(t, 2, func(c *Config) { c.Rekey = seal.RekeyPolicy{Bytes: 1 << 20} })
	for _, l := range pr.alinks {
		l.tamper.Store(37)
		l.replay.Store(41)
	}
	transfer(t, pr, 8<<20, nil)
	_, c := pr.b.Stats()
	var injected uint64
	for _, l := range pr.alinks {
		injected += l.injected.Load()
	}
	t.Logf("injected %d, receiver dropped %v, duplicates %d", injected, c.Dropped, c.Duplicates)
	if c.Dropped.Auth == 0 || c.Dropped.Replay == 0 {
		t.Fatalf("tampered or replayed packets not counted: %v", c.Dropped)
	}
	if c.Dropped.Auth+c.Dropped.Replay+c.Dropped.Epoch < injected*9/10 {
		t.Fatalf("%d injected, only %v dropped", injected, c.Dropped)
	}
	if ep := pr.b.recv.Epoch(); ep < 5 {
		t.Fatalf("receiver at key epoch %d after 8 MiB with 1 MiB rekeying", ep)
	}
}

func TestWrongPeerKey(t *testing.T) {
	ka, _ := seal.GenerateKeyPair()
	kb, _ := seal.GenerateKeyPair()
	kc, _ := seal.GenerateKeyPair()
	x, _ := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	y, _ := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	x.SetRemote(y.LocalAddr())
	y.SetRemote(x.LocalAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	var errB error
	var wg sync.WaitGroup
	// b expects c, not a.
	wg.Go(func() { _, errB = Accept(ctx, Config{Local: kb, Peer: kc.Public, Links: []Link{y}}) })
	_, errA := Dial(ctx, Config{Local: ka, Peer: kb.Public, Links: []Link{x}})
	wg.Wait()
	if errA == nil || errB == nil {
		t.Fatalf("handshake with an unknown key succeeded: %v %v", errA, errB)
	}
}

// TestThousandStreams opens 1,000 yamux streams over one session, checks
// every byte each way, and keeps one stream unread meanwhile: the others
// finish regardless.
func TestThousandStreams(t *testing.T) {
	pr := newPairRaw(t, 3, nil, true)
	ma, err := Mux(pr.a)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := Mux(pr.b)
	if err != nil {
		t.Fatal(err)
	}
	tunneltest.SlowReaderStreams(t, ma, mb, 1000, 16<<10, 64<<20, 30*time.Second)
}

// TestSessionTimeout: a session whose every path goes silent ends with
// ErrTimeout, and its reader and writer return.
func TestSessionTimeout(t *testing.T) {
	pr := newPair(t, 2, func(c *Config) { c.Timeout = 700 * time.Millisecond })
	for _, l := range append(pr.alinks, pr.blinks...) {
		l.blackhole.Store(true)
	}
	readErr := make(chan error, 1)
	go func() { _, err := pr.a.Read(make([]byte, 10)); readErr <- err }()
	select {
	case <-pr.a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
	if !errors.Is(pr.a.Err(), ErrTimeout) {
		t.Fatalf("Err() = %v", pr.a.Err())
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("Read: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read did not return")
	}
	if _, err := pr.a.Write([]byte("x")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Write: %v", err)
	}
}

// TestPeerRestart: when the initiator starts over (new session, same
// keys), the responder's old session ends at once and a new Accept on
// the same addresses gets the new session.
func TestPeerRestart(t *testing.T) {
	ka, _ := seal.GenerateKeyPair()
	kb, _ := seal.GenerateKeyPair()
	mk := func() (*UDPLink, *UDPLink) {
		x, _ := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
		y, _ := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
		x.SetRemote(y.LocalAddr())
		y.SetRemote(x.LocalAddr())
		return x, y
	}
	x, y := mk()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b *Session
	var errB error
	var wg sync.WaitGroup
	wg.Go(func() { b, errB = Accept(ctx, Config{Local: kb, Peer: ka.Public, Links: []Link{y}}) })
	a, err := Dial(ctx, Config{Local: ka, Peer: kb.Public, Links: []Link{x}})
	wg.Wait()
	if err != nil || errB != nil {
		t.Fatal(err, errB)
	}
	defer b.Close()
	// A dies without a word: its links close, its sockets are gone.
	a.stop()
	// A new A on a new socket, to B's same address.
	x2, _ := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	x2.SetRemote(y.LocalAddr())
	y.SetRemote(x2.LocalAddr())
	dialErr := make(chan error, 1)
	var a2 *Session
	go func() {
		var err error
		a2, err = Dial(ctx, Config{Local: ka, Peer: kb.Public, Links: []Link{x2}})
		dialErr <- err
	}()
	select {
	case <-b.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("the old session did not end on the new handshake")
	}
	if !errors.Is(b.Err(), ErrPeerRestarted) {
		t.Fatalf("Err() = %v", b.Err())
	}
	// B accepts again on a fresh socket bound to the same address.
	y2, err := ListenUDP(y.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	y2.SetRemote(x2.LocalAddr())
	b2, err := Accept(ctx, Config{Local: kb, Peer: ka.Public, Links: []Link{y2}})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if err := <-dialErr; err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	if _, err := a2.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(b2, buf); err != nil || string(buf) != "again" {
		t.Fatal(err, buf)
	}
}

// TestHostileAck: an authentic ACK for frames never sent is counted and
// ignored (it must not make the sender walk 2^62 sequence numbers), and
// the stream goes on.
func TestHostileAck(t *testing.T) {
	pr := newPair(t, 1, nil)
	plain := appendPathHeader(nil, pathHeader{path: 0, seq: 1 << 40})
	plain = appendAck(plain, ackFrame{path: 0, cum: 1 << 62, limit: 1 << 62})
	pkt, err := pr.b.send.Seal(nil, pr.b.peerID, plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := pr.blinks[0].Link.WritePacket(pkt); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, c := pr.a.Stats(); c.Malformed == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hostile ACK not counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	transfer(t, pr, 1<<20, nil)
}

// TestHandshakeFlood floods a responder waiting for its peer, from the
// peer's own address, with INITs of random bytes and with INITs whose
// mac1 is right (made by someone who knows the responder's public key)
// but whose Noise message is not: the first are dropped by mac1, the second
// mostly by the per-path rate limit, before any Diffie-Hellman; the real
// initiator still gets its session.
func TestHandshakeFlood(t *testing.T) {
	ka, _ := seal.GenerateKeyPair()
	kb, _ := seal.GenerateKeyPair()
	x, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	y, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	x.SetRemote(y.LocalAddr())
	y.SetRemote(x.LocalAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type accepted struct {
		s   *Session
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		s, err := Accept(ctx, Config{Local: kb, Peer: ka.Public, Links: []Link{y}})
		acc <- accepted{s, err}
	}()
	const n = 300
	junk := func(withMac bool) []byte {
		b := make([]byte, 4+96)
		rand.Read(b[4:])
		b[0] = typeInit
		if withMac {
			return withMac1(mac1Key(kb.Public), b)
		}
		return append(b, make([]byte, mac1Len)...)
	}
	for i := range 2 * n {
		x.WritePacket(junk(i >= n))
		if i%25 == 0 {
			time.Sleep(time.Millisecond) // no loss in the socket buffer
		}
	}
	sa, err := Dial(ctx, Config{Local: ka, Peer: kb.Public, Links: []Link{x}})
	if err != nil {
		t.Fatalf("no session after the flood: %v", err)
	}
	defer sa.Close()
	r := <-acc
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.s.Close()
	_, c := r.s.Stats()
	t.Logf("responder's handshake drops: %+v", c.Handshake)
	if c.Handshake.Mac < n*9/10 {
		t.Errorf("%d INITs dropped for their mac1, want about %d", c.Handshake.Mac, n)
	}
	// The flood took a few ms: the bucket let through its burst and
	// little more.
	if c.Handshake.Limited < n*8/10 {
		t.Errorf("%d INITs with a valid mac1 dropped by the rate limit, want most of %d", c.Handshake.Limited, n)
	}
	// The session works.
	go sa.Write([]byte("after the flood"))
	got := make([]byte, len("after the flood"))
	r.s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(r.s, got); err != nil || string(got) != "after the flood" {
		t.Fatalf("read %q, %v", got, err)
	}
}

func TestMac1(t *testing.T) {
	k, _ := seal.GenerateKeyPair()
	other, _ := seal.GenerateKeyPair()
	pkt := withMac1(mac1Key(k.Public), []byte{typeInit, 0, 0, 0, 1, 2, 3})
	if body, ok := checkMac1(mac1Key(k.Public), pkt); !ok || !bytes.Equal(body, []byte{typeInit, 0, 0, 0, 1, 2, 3}) {
		t.Fatal("a packet with its mac1 refused")
	}
	for name, bad := range map[string][]byte{
		"other key": withMac1(mac1Key(other.Public), []byte{typeInit, 0, 0, 0, 1, 2, 3}),
		"changed":   append([]byte{typeInit, 0, 0, 0, 1, 2, 4}, pkt[7:]...),
		"short":     pkt[:4+mac1Len-1],
		"empty":     nil,
	} {
		if _, ok := checkMac1(mac1Key(k.Public), bad); ok {
			t.Errorf("%s: accepted", name)
		}
	}
	var b hsBucket
	now := testNow
	took := 0
	for range 100 {
		if b.take(now) {
			took++
		}
	}
	if took != hsBurst {
		t.Fatalf("%d at once, want the burst %d", took, hsBurst)
	}
	if !b.take(now.Add(time.Second/hsRate)) || b.take(now.Add(time.Second/hsRate)) {
		t.Fatal("the bucket does not refill at hsRate")
	}
}

// TestSmallWritesCoalesce writes 1 MiB in writes of 12 and 500 bytes (a
// yamux header, a short read) while the paths are kept busy: the bytes
// arrive intact and in order, in far fewer packets than writes.
func TestSmallWritesCoalesce(t *testing.T) {
	pr := newPair(t, 2, nil)
	const total = 1 << 20
	src := make([]byte, total)
	rand.Read(src)
	done := make(chan error, 1)
	go func() {
		got := make([]byte, total)
		_, err := io.ReadFull(pr.b, got)
		if err == nil && !bytes.Equal(got, src) {
			err = errors.New("bytes differ")
		}
		done <- err
	}()
	writes := 0
	for off := 0; off < total; writes++ {
		n := min(total-off, []int{12, 500}[writes%2])
		if _, err := pr.a.Write(src[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("transfer stuck")
	}
	st, _ := pr.a.Stats()
	var packets uint64
	for _, p := range st {
		packets += p.Packets
	}
	t.Logf("%d writes went out in %d packets (%d full frames' worth)", writes, packets, total/MaxFrame)
	if packets > uint64(writes)/4 {
		t.Errorf("%d packets for %d small writes: they were not put together", packets, writes)
	}
}
