package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseNameserver(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" for an error
	}{
		{"10.77.0.1", "10.77.0.1:53"},
		{"10.77.0.1:5353", "10.77.0.1:5353"},
		{"fd77::1", "[fd77::1]:53"},
		{"[fd77::1]:5353", "[fd77::1]:5353"},
		{"fe80::1%eth0", ""},
		{"10.77.0.1:0", ""},
		{"10.77.0.1:99999", ""},
		{"ns.example.com", ""},
		{"", ""},
	} {
		got, err := ParseNameserver(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("ParseNameserver(%q) = %v, want an error", tc.in, got)
		case tc.want != "" && (err != nil || got != netip.MustParseAddrPort(tc.want)):
			t.Errorf("ParseNameserver(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestDNSConfig(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "isolator.yaml")
	yaml := `uplinks:
  - {name: up0, interface: eth1, pool4: 192.0.2.10/24, gateway4: 192.0.2.1}
dns: [192.0.2.53, "[2001:db8::53]:5353"]
dns_timeout: 750ms
`
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	ns, err := c.Nameservers()
	if err != nil || len(ns) != 2 || ns[0] != netip.MustParseAddrPort("192.0.2.53:53") || ns[1] != netip.MustParseAddrPort("[2001:db8::53]:5353") {
		t.Fatalf("nameservers %v, %v", ns, err)
	}
	if c.DNSTimeout != 750*time.Millisecond {
		t.Fatalf("dns_timeout %v", c.DNSTimeout)
	}
	for _, bad := range []func(*Config){
		func(c *Config) { c.DNS = []string{"not-an-address"} },
		func(c *Config) { c.DNSTimeout = -time.Second },
		func(c *Config) { c.DNSTimeout = 2 * MaxDNSTimeout },
	} {
		cc := c
		cc.DNS = append([]string(nil), c.DNS...)
		bad(&cc)
		if err := cc.Validate(); err == nil || !strings.Contains(err.Error(), "dns") {
			t.Errorf("Validate(%+v) = %v, want a dns error", cc.DNS, err)
		}
	}
}

// TestOrphanTimeout: orphan_timeout is read from the file, 0 is the
// default, and values outside its bounds are refused.
func TestOrphanTimeout(t *testing.T) {
	p := filepath.Join(t.TempDir(), "isolator.yaml")
	yaml := `uplinks:
  - {name: up0, interface: eth1, pool4: 192.0.2.10/24, gateway4: 192.0.2.1}
orphan_timeout: 90s
`
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil || c.Orphan() != 90*time.Second {
		t.Fatalf("orphan_timeout 90s: Validate %v, Orphan() %v", err, c.Orphan())
	}
	for _, tc := range []struct {
		d    time.Duration
		want time.Duration // 0: refused
	}{
		{0, DefaultOrphanTimeout},
		{MinOrphanTimeout, MinOrphanTimeout},
		{MaxOrphanTimeout, MaxOrphanTimeout},
		{-time.Second, 0},
		{time.Millisecond, 0},
		{MaxOrphanTimeout + time.Second, 0},
	} {
		cc := c
		cc.OrphanTimeout = tc.d
		err := cc.Validate()
		switch {
		case tc.want == 0 && (err == nil || !strings.Contains(err.Error(), "orphan_timeout")):
			t.Errorf("orphan_timeout %v: Validate = %v, want an orphan_timeout error", tc.d, err)
		case tc.want != 0 && (err != nil || cc.Orphan() != tc.want):
			t.Errorf("orphan_timeout %v: Validate = %v, Orphan() = %v; want %v", tc.d, err, cc.Orphan(), tc.want)
		}
	}
}

func TestUplinkVIPs(t *testing.T) {
	base := func(vips ...string) Uplink {
		return Uplink{Name: "up0", Interface: "eth1", Pool4: "10.77.0.10/24", Weight: 1, VIPs: vips}
	}
	with6 := func(vips ...string) Uplink {
		u := base(vips...)
		u.Pool6 = "fd77::10/64"
		return u
	}
	cases := []struct {
		name string
		u    Uplink
		want string // substring of the error; "" means valid
	}{
		{"v4", base("10.77.0.5"), ""},
		{"v4 off the subnet", base("192.0.2.1"), ""},
		{"v6", with6("10.77.0.5", "fd77::5"), ""},
		{"v6 without pool6", base("fd77::5"), "no pool6"},
		{"in the pool", base("10.77.0.10"), "inside the INS address pool"},
		{"in the pool, high", base("10.77.0.200"), "inside the INS address pool"},
		{"twice", base("10.77.0.5", "10.77.0.5"), "twice"},
		{"garbage", base("10.77.0"), "want an IPv4 or IPv6 address"},
		{"zone", with6("fe80::1%eth0"), "want an IPv4 or IPv6 address"},
		{"multicast", base("224.0.0.1"), "unicast"},
		{"unspecified", base("0.0.0.0"), "unicast"},
		{"loopback", base("127.0.0.1"), "unicast"},
		{"link-local", with6("fe80::1"), "unicast"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.u.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	u, err := ParseUplinkFlag("up0=eth1,pool4=10.77.0.10/24,vip=10.77.0.5,vip=10.77.0.6")
	if err != nil || !slices.Equal(u.VIPs, []string{"10.77.0.5", "10.77.0.6"}) {
		t.Fatalf("ParseUplinkFlag: %+v, %v", u, err)
	}
	c := Default()
	c.Uplinks = []Uplink{base("10.77.0.5"), {Name: "up1", Interface: "eth2", Pool4: "10.78.0.10/24", VIPs: []string{"10.77.0.5"}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "also on uplink") {
		t.Fatalf("a VIP on two uplinks: %v", err)
	}
}

func FuzzUplinkVIPs(f *testing.F) {
	f.Add("up0=eth1,pool4=10.77.0.10/24,pool6=fd77::10/64,vip=10.77.0.5,vip=fd77::5")
	f.Add("up0=eth1,pool4=10.77.0.10/24,vip=::ffff:10.77.0.5")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUplinkFlag(s)
		if err != nil {
			return
		}
		vips, err := u.VIPAddrs()
		if err != nil {
			return
		}
		for _, v := range vips {
			if !v.IsValid() || v.Is4In6() || v.IsUnspecified() || v.IsMulticast() || v.IsLoopback() || v.IsLinkLocalUnicast() {
				t.Fatalf("%q: accepted VIP %v", s, v)
			}
		}
	})
}

func TestUplinkTunnel(t *testing.T) {
	base := func(tunnel string, rs ...Remote) Uplink {
		return Uplink{Name: "up0", Interface: "eth1", Pool4: "10.77.0.10/24", Weight: 1, VIPs: []string{"10.77.0.5"}, Tunnel4: tunnel, Remotes: rs}
	}
	cases := []struct {
		name string
		u    Uplink
		want string // substring of the error; "" means valid
	}{
		{"endpoint only", base("10.77.0.2"), ""},
		{"remotes", base("10.77.0.2", Remote{Name: "b", Tunnel4: "10.79.0.2"}, Remote{Name: "c", Tunnel4: "10.80.0.2", Weight: 3}), ""},
		{"remotes without tunnel4", base("", Remote{Name: "b", Tunnel4: "10.79.0.2"}), "need vips and tunnel4"},
		{"IPv6 tunnel4", base("fd00::2"), "IPv4 unicast"},
		{"bad remote address", base("10.77.0.2", Remote{Name: "b", Tunnel4: "224.0.0.1"}), "IPv4 unicast"},
		{"remote is this host", base("10.77.0.2", Remote{Name: "b", Tunnel4: "10.77.0.2"}), "this host's"},
		{"name twice", base("10.77.0.2", Remote{Name: "b", Tunnel4: "10.79.0.2"}, Remote{Name: "b", Tunnel4: "10.80.0.2"}), "unique name"},
		{"no name", base("10.77.0.2", Remote{Tunnel4: "10.79.0.2"}), "unique name"},
		{"negative weight", base("10.77.0.2", Remote{Name: "b", Tunnel4: "10.79.0.2", Weight: -1}), "weight"},
		{"gue", func() Uplink { u := base("10.77.0.2", Remote{Name: "b", Tunnel4: "10.79.0.2"}); u.GUE = 6080; return u }(), ""},
		{"gue without tunnel4", func() Uplink { u := base(""); u.GUE = 6080; return u }(), "gue 6080"},
		{"gue port too large", func() Uplink { u := base("10.77.0.2"); u.GUE = 70000; return u }(), "gue 70000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.u.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	noVIP := base("10.77.0.2", Remote{Name: "b", Tunnel4: "10.79.0.2"})
	noVIP.VIPs = nil
	if err := noVIP.Validate(); err == nil {
		t.Errorf("remotes on an uplink without VIPs accepted")
	}
}
