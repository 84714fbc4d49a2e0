package config

import (
	"os"
	"strings"
	"testing"
)

func TestUplinkLinkOptions(t *testing.T) {
	for _, tc := range []struct {
		flag        string
		backend     string
		gso         bool
		errContains string
	}{
		{flag: "up0=eth1,pool4=10.0.0.10/24", backend: "", gso: DefaultGSO},
		{flag: "up0=eth1,pool4=10.0.0.10/24,backend=packet,gso=off", backend: "packet", gso: false},
		{flag: "up0=eth1,pool4=10.0.0.10/24,gso=on", backend: "", gso: true},
		{flag: "up0=eth1,pool4=10.0.0.10/24,backend=xdp", backend: "xdp", gso: DefaultGSO},
		{flag: "up0=eth1,pool4=10.0.0.10/24,backend=xdp,gso=off", backend: "xdp", gso: false},
		{flag: "up0=eth1,pool4=10.0.0.10/24,backend=tap", errContains: `backend "tap"`},
		{flag: "up0=eth1,pool4=10.0.0.10/24,gso=yes", errContains: `gso "yes"`},
		{flag: "up0=eth1,pool4=10.0.0.10/24,txqueue=on", errContains: `unknown key "txqueue"`},
	} {
		u, err := ParseUplinkFlag(tc.flag)
		if err == nil {
			err = u.Validate()
		}
		if tc.errContains != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errContains) {
				t.Errorf("%s: error %v, want one containing %q", tc.flag, err, tc.errContains)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.flag, err)
			continue
		}
		if u.Backend != tc.backend || u.GSOEnabled() != tc.gso {
			t.Errorf("%s: backend %q gso %v, want %q %v", tc.flag, u.Backend, u.GSOEnabled(), tc.backend, tc.gso)
		}
	}
}

func TestLoadLinkOptions(t *testing.T) {
	path := t.TempDir() + "/c.yaml"
	writeFile(t, path, `uplinks:
  - name: up0
    interface: eth1
    pool4: 10.0.0.10/24
    backend: xdp
    gso: "off"
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if u := c.Uplinks[0]; u.Backend != "xdp" || u.GSOEnabled() {
		t.Errorf("loaded %+v: want backend xdp, GSO off", u)
	}
}

// FuzzParseUplinkFlag feeds arbitrary flag values to the parser and the
// validator: neither may panic, and whatever validates has a known backend
// and GSO setting.
func FuzzParseUplinkFlag(f *testing.F) {
	for _, s := range []string{
		"up0=eth1,pool4=10.0.0.10/24,gw4=10.0.0.1,weight=2,backend=xdp,gso=off",
		"up0=eth1,pool4=10.0.0.10/24,pool6=fd00::10/64,gw6=fd00::1,gso=on",
		"=,,,",
		"a=b,backend=,gso=",
		"up0=eth1,weight=-1,backend=packet",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUplinkFlag(s)
		if err != nil {
			return
		}
		if u.Validate() != nil {
			return
		}
		if u.Backend != "" && u.Backend != "packet" && u.Backend != "xdp" {
			t.Fatalf("%q validated with backend %q", s, u.Backend)
		}
		if u.GSO != "" && u.GSO != "on" && u.GSO != "off" {
			t.Fatalf("%q validated with gso %q", s, u.GSO)
		}
	})
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
