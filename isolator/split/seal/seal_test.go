package seal

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"
)

type vector struct {
	Protocol   string `json:"protocol_name"`
	Prologue   string `json:"init_prologue"`
	InitStatic string `json:"init_static"`
	InitEph    string `json:"init_ephemeral"`
	InitRemote string `json:"init_remote_static"`
	RespStatic string `json:"resp_static"`
	RespEph    string `json:"resp_ephemeral"`
	Hash       string `json:"handshake_hash"`
	Messages   []struct {
		Payload    string `json:"payload"`
		Ciphertext string `json:"ciphertext"`
	} `json:"messages"`
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pair(t *testing.T, s string) KeyPair {
	t.Helper()
	var p [KeyLen]byte
	copy(p[:], unhex(t, s))
	kp, err := KeyPairFromPrivate(p)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// TestNoiseVectors replays the published cacophony vectors for
// Noise_IK_25519_ChaChaPoly_BLAKE2s: both handshake messages, the handshake
// hash, and the transport messages sealed with the session keys the way
// this package seals packets (nonce = 4 zero bytes + little-endian counter).
func TestNoiseVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/noise_ik_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Vectors []vector }
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	for i, v := range f.Vectors {
		if v.Protocol != Protocol {
			t.Fatalf("vector %d is %s", i, v.Protocol)
		}
		ini, resp := pair(t, v.InitStatic), pair(t, v.RespStatic)
		if hex.EncodeToString(resp.Public[:]) != v.InitRemote {
			t.Fatalf("vector %d: derived responder public key differs", i)
		}
		pro := unhex(t, v.Prologue)
		h, msg, err := startHandshake(ini, resp.Public, unhex(t, v.Messages[0].Payload), bytes.NewReader(unhex(t, v.InitEph)), pro)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(msg); got != v.Messages[0].Ciphertext {
			t.Fatalf("vector %d message 0:\n got %s\nwant %s", i, got, v.Messages[0].Ciphertext)
		}
		acc, err := readHandshake(resp, msg, bytes.NewReader(unhex(t, v.RespEph)), pro)
		if err != nil {
			t.Fatal(err)
		}
		if acc.Peer != ini.Public || hex.EncodeToString(acc.Payload) != v.Messages[0].Payload {
			t.Fatalf("vector %d: responder learned wrong peer or payload", i)
		}
		msg2, rk, err := acc.Reply(unhex(t, v.Messages[1].Payload))
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(msg2); got != v.Messages[1].Ciphertext {
			t.Fatalf("vector %d message 1:\n got %s\nwant %s", i, got, v.Messages[1].Ciphertext)
		}
		p2, ik, err := h.Finish(msg2)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(p2) != v.Messages[1].Payload {
			t.Fatalf("vector %d: initiator read wrong payload", i)
		}
		if hex.EncodeToString(ik.Hash) != v.Hash || !bytes.Equal(ik.Hash, rk.Hash) {
			t.Fatalf("vector %d: handshake hash %x, want %s", i, ik.Hash, v.Hash)
		}
		if ik.Send != rk.Recv || ik.Recv != rk.Send {
			t.Fatalf("vector %d: keys do not pair up", i)
		}
		var counter [2]uint64
		for j, m := range v.Messages[2:] {
			key := ik.Send // initiator writes even messages
			dir := 0
			if j%2 == 1 {
				key, dir = ik.Recv, 1
			}
			n := nonce(counter[dir])
			counter[dir]++
			got := newAEAD(key).Seal(nil, n[:], unhex(t, m.Payload), nil)
			if hex.EncodeToString(got) != m.Ciphertext {
				t.Fatalf("vector %d transport message %d:\n got %x\nwant %s", i, j+2, got, m.Ciphertext)
			}
		}
	}
}

func handshake(t *testing.T) (ini, resp SessionKeys) {
	t.Helper()
	a, err := GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	h, m1, err := StartHandshake(a, b.Public, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	acc, err := ReadHandshake(b, m1)
	if err != nil {
		t.Fatal(err)
	}
	if acc.Peer != a.Public || string(acc.Payload) != "hello" {
		t.Fatal("responder did not authenticate the initiator")
	}
	m2, rk, err := acc.Reply([]byte("olleh"))
	if err != nil {
		t.Fatal(err)
	}
	p, ik, err := h.Finish(m2)
	if err != nil || string(p) != "olleh" {
		t.Fatal(p, err)
	}
	return ik, rk
}

func TestHandshakeWrongResponderKey(t *testing.T) {
	a, _ := GenerateKeyPair()
	b, _ := GenerateKeyPair()
	c, _ := GenerateKeyPair()
	_, m1, err := StartHandshake(a, b.Public, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ReadHandshake(c, m1); err == nil {
		t.Fatal("a message for b was accepted by c")
	}
	m1[len(m1)-1] ^= 1
	if _, err := ReadHandshake(b, m1); err == nil {
		t.Fatal("a changed message was accepted")
	}
	if _, err := ReadHandshake(b, m1[:10]); err == nil {
		t.Fatal("a short message was accepted")
	}
}

func TestKeyText(t *testing.T) {
	kp, _ := GenerateKeyPair()
	got, err := ParsePublicKey(kp.Public.String())
	if err != nil || got != kp.Public {
		t.Fatal(got, err)
	}
	back, err := ParsePrivateKey(kp.PrivateString())
	if err != nil || back != kp {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "abc", "AAAA", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "!!!"} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
}

func TestSealOpen(t *testing.T) {
	ik, rk := handshake(t)
	s := NewSender(ik.Send, RekeyPolicy{})
	r := NewReceiver(rk.Recv, 7, 0)
	var pkts [][]byte
	for i := range 10 {
		p, err := s.Seal(nil, 7, []byte{byte(i), 'x'})
		if err != nil {
			t.Fatal(err)
		}
		pkts = append(pkts, p)
	}
	// Out of order is fine, each packet once.
	for _, i := range []int{3, 0, 9, 1, 2, 4, 8, 5, 6, 7} {
		out, seq, err := r.Open(nil, pkts[i])
		if err != nil || seq != uint64(i) || out[0] != byte(i) {
			t.Fatalf("packet %d: %v seq %d out %v", i, err, seq, out)
		}
	}
	tampered := append([]byte(nil), pkts[2]...)
	tampered[HeaderLen+1] ^= 0x40
	other, _ := s.Seal(nil, 8, []byte("x"))
	hdr, _ := s.Seal(nil, 7, []byte("y"))
	hdr[3] ^= 1 // epoch changed: the header is authenticated
	for _, c := range []struct {
		name string
		pkt  []byte
		want error
	}{
		{"replay", pkts[4], ErrReplay},
		{"tampered", tampered, ErrReplay}, // seq 2 already seen: refused before decryption
		{"other session", other, ErrSession},
		{"short", pkts[0][:Overhead-1], ErrShort},
		{"not data", append([]byte{1}, pkts[0][1:]...), ErrShort},
		{"header changed", hdr, ErrAuth}, // tried under the next epoch's key, which does not verify
	} {
		if _, _, err := r.Open(nil, c.pkt); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	fresh, _ := s.Seal(nil, 7, []byte("fresh"))
	fresh[len(fresh)-1] ^= 1
	if _, _, err := r.Open(nil, fresh); !errors.Is(err, ErrAuth) {
		t.Fatalf("tampered tag: %v", err)
	}
	fresh[len(fresh)-1] ^= 1 // a failed forgery did not burn the number
	if out, _, err := r.Open(nil, fresh); err != nil || string(out) != "fresh" {
		t.Fatalf("genuine packet after forgery: %v", err)
	}
	d := r.Drops()
	if d.Replay != 2 || d.Session != 1 || d.Short != 2 || d.Epoch != 0 || d.Auth != 2 || r.Epoch() != 0 {
		t.Fatalf("drops %v", d)
	}
}

func TestRekeyByBytes(t *testing.T) {
	ik, rk := handshake(t)
	s := NewSender(ik.Send, RekeyPolicy{Bytes: 1000})
	r := NewReceiver(rk.Recv, 1, time.Hour)
	var old [][]byte
	for i := range 50 {
		p, err := s.Seal(nil, 1, make([]byte, 100))
		if err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			old = append(old, p) // held back: arrives after the next epoch
			continue
		}
		if _, _, err := r.Open(nil, p); err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
	}
	epoch, _, rekeys := s.Stats()
	if epoch != 4 || rekeys != 4 || r.Epoch() != 4 {
		t.Fatalf("sender epoch %d rekeys %d, receiver epoch %d", epoch, rekeys, r.Epoch())
	}
	// Held back were one packet of each epoch 0..4: epoch 4 is current and
	// epoch 3 within the overlap; epochs 0..2 are gone.
	var ok, gone int
	for _, p := range old {
		if _, _, err := r.Open(nil, p); err == nil {
			ok++
		} else if errors.Is(err, ErrEpoch) {
			gone++
		} else {
			t.Fatal(err)
		}
	}
	if ok != 2 || gone != 3 {
		t.Fatalf("held-back packets: %d opened, %d too old; want 2 and 3", ok, gone)
	}
}

func TestRekeyByTimeAndOverlap(t *testing.T) {
	ik, rk := handshake(t)
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	s := newSender(ik.Send, RekeyPolicy{After: time.Second}, clock)
	r := newReceiver(rk.Recv, 1, 2*time.Second, clock)
	p0, _ := s.Seal(nil, 1, []byte("a"))
	now = now.Add(1500 * time.Millisecond)
	p1, _ := s.Seal(nil, 1, []byte("b")) // epoch 1
	if _, _, err := r.Open(nil, p1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Open(nil, p0); err != nil {
		t.Fatalf("old key within overlap: %v", err)
	}
	p2, _ := s.Seal(nil, 1, []byte("c"))
	_ = p2
	now = now.Add(3 * time.Second)
	p3, _ := s.Seal(nil, 1, []byte("d")) // epoch 2
	// Skip p2: the receiver jumps from epoch 1 to 2 on p3, and an epoch-1
	// packet is opened within the overlap but not after it.
	if _, _, err := r.Open(nil, p3); err != nil || r.Epoch() != 2 {
		t.Fatal(err, r.Epoch())
	}
	now = now.Add(3 * time.Second)
	if _, _, err := r.Open(nil, p2); !errors.Is(err, ErrEpoch) {
		t.Fatalf("epoch-1 packet after the overlap: %v", err)
	}
	// Epochs skipped entirely (all their packets lost) are derived.
	var last []byte
	for range 3 {
		now = now.Add(1100 * time.Millisecond)
		last, _ = s.Seal(nil, 1, []byte("e"))
	}
	if out, _, err := r.Open(nil, last); err != nil || string(out) != "e" || r.Epoch() != 5 {
		t.Fatal(err, r.Epoch())
	}
	if NextKey(ik.Send) == ik.Send {
		t.Fatal("rekey kept the key")
	}
}

func TestWindow(t *testing.T) {
	var w Window
	mark := func(s uint64) bool {
		if !w.Check(s) {
			return false
		}
		w.Mark(s)
		return true
	}
	for _, c := range []struct {
		seq  uint64
		want bool
	}{
		{0, true}, {0, false}, {5, true}, {3, true}, {3, false}, {5, false},
		{WindowBits - 64 + 3, true}, {4, true}, {3, false}, {2, false}, {1, false},
		{100000, true}, {100000 - WindowBits + 65, true}, {100000 - WindowBits + 64, false},
		{99999, true}, {100001, true}, {99999, false},
		{1 << 40, true}, {1<<40 - 1, true}, {100001, false},
	} {
		if got := mark(c.seq); got != c.want {
			t.Fatalf("seq %d: accepted %v, want %v", c.seq, got, c.want)
		}
	}
}

func FuzzOpen(f *testing.F) {
	var k [KeyLen]byte
	s := NewSender(k, RekeyPolicy{Bytes: 64})
	for i := range 4 {
		p, _ := s.Seal(nil, 9, bytes.Repeat([]byte{byte(i)}, 40))
		f.Add(p)
	}
	f.Add([]byte{})
	f.Add(make([]byte, Overhead))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		r := NewReceiver(k, 9, 0)
		out, _, err := r.Open(nil, pkt)
		if err == nil && len(out) != len(pkt)-Overhead {
			t.Fatalf("opened %d bytes from a %d-byte packet", len(out), len(pkt))
		}
		if err != nil && r.Drops().Total() != 1 {
			t.Fatalf("refusal not counted: %v", r.Drops())
		}
	})
}
