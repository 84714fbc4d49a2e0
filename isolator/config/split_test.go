package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/isolator/split/seal"
)

func TestLoadSplit(t *testing.T) {
	kp, _ := seal.GenerateKeyPair()
	good := `key: /etc/mpshim/split.key
peers:
  - name: b
    key: ` + kp.Public.String() + `
    paths:
      - {local: 10.77.0.1:7000, endpoint: 10.77.0.2:7000}
      - {local: 10.77.1.1:7000, endpoint: 10.77.1.2:7000}
split:
  - {dst: 10.20.0.5:80, peer: b, listen: 127.0.0.1:9000}
expose:
  - {peer: b, dst: 10.30.0.0/16}
`
	for _, c := range []struct {
		name, yaml, err string
	}{
		{"good", good, ""},
		{"unknown field", good + "bogus: 1\n", "bogus"},
		{"bad key", strings.Replace(good, kp.Public.String(), "AAAA", 1), "public key"},
		{"no paths", strings.Replace(strings.Replace(good, "      - {local: 10.77.0.1:7000, endpoint: 10.77.0.2:7000}\n", "", 1), "      - {local: 10.77.1.1:7000, endpoint: 10.77.1.2:7000}\n", "", 1), "paths"},
		{"bad endpoint", strings.Replace(good, "10.77.0.2:7000", "10.77.0.2", 1), "endpoint"},
		{"mixed families", strings.Replace(good, "10.77.0.2:7000", "[fd00::1]:7000", 1), "families"},
		{"unknown peer", strings.Replace(good, "peer: b, listen", "peer: c, listen", 1), `no peer "c"`},
		{"bad prefix", strings.Replace(good, "10.30.0.0/16", "10.30.0.0", 1), "prefix"},
		{"no key", strings.Replace(good, "key: /etc/mpshim/split.key\n", "", 1), "private key"},
		{"bad listen", strings.Replace(good, "127.0.0.1:9000", "here", 1), "listen"},
		{"shim route", good + "handoff: /run/mpshim/h.sock\n", ""},
		{"shim route not a prefix", strings.Replace(good, "{dst: 10.20.0.5:80, peer: b, listen: 127.0.0.1:9000}", "{dst: 10.20.0.5:80, peer: b}", 1), "want a prefix"},
		{"relative handoff", good + "handoff: h.sock\n", "handoff"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "split.yaml")
			os.WriteFile(p, []byte(c.yaml), 0o600)
			s, err := LoadSplit(p)
			switch {
			case c.err == "" && err != nil:
				t.Fatal(err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("error %v, want one mentioning %q", err, c.err)
			case c.err == "":
				if len(s.Peers) != 1 || len(s.Peers[0].Paths) != 2 || s.Status != DefaultSplitStatus || len(s.Routes) != 1 || len(s.Expose) != 1 {
					t.Fatalf("%+v", s)
				}
			}
		})
	}
}

func TestSplitRoutePrefix(t *testing.T) {
	for _, c := range []struct{ dst, want string }{
		{"10.20.0.0/16", "10.20.0.0/16"},
		{"10.20.3.4/16", "10.20.0.0/16"},
		{"10.20.0.5", "10.20.0.5/32"},
		{"fd00::/8", "fd00::/8"},
		{"fd00::1", "fd00::1/128"},
		{"10.20.0.5:80", ""},
		{"fe80::1%eth0", ""},
		{"", ""},
	} {
		p, err := SplitRoute{Dst: c.dst}.Prefix()
		if (c.want == "") != (err != nil) || (err == nil && p.String() != c.want) {
			t.Errorf("Prefix(%q) = %v, %v; want %q", c.dst, p, err, c.want)
		}
	}
}

func TestDaemonSplitTunnel(t *testing.T) {
	kp, _ := seal.GenerateKeyPair()
	c := Default()
	if _, ok := c.SplitTunnel(); ok {
		t.Fatal("a configuration without peers runs a split gateway")
	}
	c.SplitKey = "/etc/mpshim/split.key"
	c.Peers = []Peer{{Name: "b", Key: kp.Public.String(), Paths: []PeerPath{{Local: "10.77.0.2:7000", Endpoint: "10.77.0.1:7000"}}}}
	c.Split = []SplitRoute{{Dst: "10.20.0.0/16", Peer: "b"}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	st, ok := c.SplitTunnel()
	if !ok || st.Status != DefaultSplitStatus || len(st.ShimPrefixes()) != 1 {
		t.Fatalf("%+v %v", st, ok)
	}
	c.Split[0].Peer = "c"
	c.SplitKey = ""
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), `no peer "c"`) || !strings.Contains(err.Error(), "private key") {
		t.Fatalf("error %v, want one naming the unknown peer and the missing key", err)
	}
}

func TestParsePeerFlag(t *testing.T) {
	kp, _ := seal.GenerateKeyPair()
	key := kp.Public.String()
	for _, c := range []struct{ spec, err string }{
		{"key=" + key + ",local=10.77.0.2:7000,endpoint=10.77.0.1:7000", ""},
		{"key=" + key + ",local=10.77.0.2:7000,endpoint=10.77.0.1:7000,local=10.77.1.2:7000,endpoint=10.77.1.1:7000,split=10.20.0.0/16,expose=10.30.0.0/16", ""},
		{"key=" + key + ",local=10.77.0.2:7000", "one of each"},
		{"key=" + key, "paths"},
		{"local=10.77.0.2:7000,endpoint=10.77.0.1:7000", "public key"},
		{"key=" + key + ",key=" + key + ",local=10.77.0.2:7000,endpoint=10.77.0.1:7000", "twice"},
		{"key=" + key + ",local=10.77.0.2:7000,endpoint=10.77.0.1:7000,split=10.20.0.5:80", "prefix"},
		{"key=" + key + ",local=10.77.0.2:7000,endpoint=10.77.0.1:7000,expose=nowhere", "prefix"},
		{"key=" + key + ",local=10.77.0.2:7000,endpoint=10.77.0.1:7000,bogus=1", "unknown key"},
		{"key", "KEY=VALUE"},
	} {
		p, split, expose, err := ParsePeerFlag("b", c.spec)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.spec, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want one mentioning %q", c.spec, err, c.err)
		case c.err == "" && (p.Name != "b" || p.Key != key || len(p.Paths) == 0 || len(split) != len(expose)):
			t.Errorf("%s: %+v %v %v", c.spec, p, split, expose)
		}
	}
}

func FuzzParsePeerFlag(f *testing.F) {
	f.Add("b", "key=AAAA,local=10.77.0.2:7000,endpoint=10.77.0.1:7000,split=10.20.0.0/16")
	f.Add("b", "local=[fd00::1]:7000,endpoint=[fd00::2]:7000,expose=fd00::/8")
	f.Add("", ",,,=")
	f.Fuzz(func(t *testing.T, name, spec string) {
		p, split, expose, err := ParsePeerFlag(name, spec)
		if err != nil {
			return
		}
		s := Split{Key: "-", Peers: []Peer{p}}
		for _, d := range split {
			s.Routes = append(s.Routes, SplitRoute{Dst: d, Peer: name})
		}
		for _, d := range expose {
			s.Expose = append(s.Expose, Expose{Dst: d, Peer: name})
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted %q %q, but the configuration is invalid: %v", name, spec, err)
		}
	})
}
