package gateway

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/split/seal"
)

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	kp, _ := seal.GenerateKeyPair()
	p := filepath.Join(dir, "k")
	if err := WriteKey(p, kp); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}
	back, err := ReadKey(p)
	if err != nil || back != kp {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("not a key\n"), 0o600)
	if _, err := ReadKey(p); err == nil {
		t.Fatal("garbage accepted as a key")
	}
	if _, err := ReadKey(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func splitConfig(t *testing.T, self seal.KeyPair, peer seal.PublicKey) config.Split {
	dir := t.TempDir()
	kf := filepath.Join(dir, "k")
	if err := WriteKey(kf, self); err != nil {
		t.Fatal(err)
	}
	return config.Split{
		Key:    kf,
		Status: filepath.Join(dir, "s.sock"),
		Peers: []config.Peer{{Name: "b", Key: peer.String(), Paths: []config.PeerPath{
			{Local: "127.0.0.1:0", Endpoint: "127.0.0.1:9"},
		}}},
		Expose: []config.Expose{{Peer: "b", Dst: "127.0.0.0/8"}},
	}
}

func TestNewRefusesOwnKey(t *testing.T) {
	kp, _ := seal.GenerateKeyPair()
	if _, err := New(splitConfig(t, kp, kp.Public), nil); err == nil {
		t.Fatal("a peer with this isolator's own key was accepted")
	}
}

// TestStatusWithoutSession: a gateway whose peer never answers serves
// its status (peer down, no paths) and stops with its context.
func TestStatusWithoutSession(t *testing.T) {
	self, _ := seal.GenerateKeyPair()
	peer, _ := seal.GenerateKeyPair()
	cfg := splitConfig(t, self, peer.Public)
	g, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !g.peers["b"].allows(netipMust("127.0.0.1:80")) || g.peers["b"].allows(netipMust("10.0.0.1:80")) {
		t.Fatal("expose policy")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	var st []PeerStatus
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err = ReadStatus(context.Background(), cfg.Status)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(st) != 1 || st[0].Name != "b" || st[0].Up || len(st[0].Paths) != 0 {
		t.Fatalf("status %+v", st)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(35 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if _, err := ReadStatus(context.Background(), cfg.Status); err == nil {
		t.Fatal("status socket still served after Run returned")
	}
}

func netipMust(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
