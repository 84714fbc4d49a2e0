package config

import (
	"net/netip"
	"os"
	"path/filepath"
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
