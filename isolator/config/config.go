// Package config holds the isolator daemon's configuration: uplinks and
// their address pools, the number of INS at start, the registration and API
// sockets and who may use them. It is read from a YAML file and/or flags and
// validated as a whole before the daemon touches anything.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mpshim/mpshim/lb/autoscale"
)

// Defaults of the daemon's sockets.
const (
	DefaultSocket = "/run/mpshim/isolator.sock"
	DefaultAPI    = "/run/mpshim/api.sock"
	// DefaultStateDir holds what must survive a restart (mitigation rules).
	DefaultStateDir = "/var/lib/mpshim"
)

// Policies an INS can use to place outbound flows on uplinks.
var Policies = []string{"wrr", "rtt", "hash"}

// Config is the daemon's whole configuration.
type Config struct {
	// Uplinks are the host interfaces every INS gets a NIC on.
	Uplinks []Uplink `yaml:"uplinks"`
	// INS is the number of INS processes started with the daemon.
	INS int `yaml:"ins"`
	// Autoscale, if set, grows and shrinks the INS behind the uplinks'
	// VIPs by load: "min=2,max=20,conns=500,cpu=0.8,sustain=5s,
	// cooldown=15s,headroom=0.6,drain=30s" (package lb/autoscale).
	Autoscale string `yaml:"autoscale"`
	// Policy places outbound flows on uplinks: wrr, rtt or hash.
	Policy string `yaml:"policy"`
	// NetNS is the network namespace (a name under /run/netns or a path)
	// where the uplink interfaces live; empty means the daemon's own.
	NetNS string `yaml:"netns"`
	// Socket is the app registration socket.
	Socket string `yaml:"socket"`
	// SocketMode is the permission of the registration socket (octal).
	SocketMode Mode `yaml:"socket_mode"`
	// SocketGroup, if set, owns the registration socket so that apps that
	// drop privileges to that group can still register.
	SocketGroup string `yaml:"socket_group"`
	// AllowUIDs and AllowGIDs list who may register (checked with
	// SO_PEERCRED). Both empty means only the daemon's own uid.
	AllowUIDs []uint32 `yaml:"allow_uids"`
	AllowGIDs []uint32 `yaml:"allow_gids"`
	// INSUser is the user every INS runs as once it is sealed: a name or a
	// uid, with its primary group. Empty means DefaultINSUser.
	INSUser string `yaml:"ins_user"`
	// INSUIDs, if set ("START-END"), gives each INS a uid and gid of its
	// own instead: INS n runs as START+n-1. It overrides INSUser.
	INSUIDs string `yaml:"ins_uids"`
	// API is the socket the CLIs talk to (mode 0600).
	API string `yaml:"api"`
	// MaxINS bounds the number of INS processes (spawn refuses more).
	MaxINS int `yaml:"max_ins"`
	// StateDir keeps state across restarts: the mitigation rules and
	// tunings (mitigation.json), the running INS a restarted daemon adopts
	// (ins.json) and their successor sockets (ins/).
	StateDir string `yaml:"state_dir"`
	// OrphanTimeout is how long an INS whose daemon died serves on and
	// waits for a successor to adopt it before it exits; 0 means
	// DefaultOrphanTimeout.
	OrphanTimeout time.Duration `yaml:"orphan_timeout"`
	// DNS lists the nameservers the INS resolve the apps' host names with,
	// asked in order: an address, or address:port (port 53 by default;
	// IPv6 with a port in brackets).
	DNS []string `yaml:"dns"`
	// DNSTimeout bounds one query to one nameserver; 0 means 2 s. Each
	// lookup tries every nameserver twice before it fails with EAI_AGAIN.
	DNSTimeout time.Duration `yaml:"dns_timeout"`
	// Flows configures flow accounting and IPFIX export.
	Flows Flows `yaml:"flows"`
	// MetricsListen, if set, serves Prometheus /metrics on this address.
	MetricsListen string `yaml:"metrics_listen"`
	// RemoteAPI, if its Listen is set, serves the API on TCP with TLS.
	RemoteAPI RemoteAPI `yaml:"remote_api"`

	// SplitKey is the file with this isolator's split tunnel private key
	// (`isolator split keygen`); needed when Peers is set.
	SplitKey string `yaml:"split_key"`
	// SplitStatus is the split gateway's status socket (`isolator peer
	// ls`, `isolator peer add`); empty means DefaultSplitStatus.
	SplitStatus string `yaml:"split_status"`
	// Peers are the other isolators of the split tunnel. With peers (or
	// a SplitKey, for peers added at run time) the daemon runs the split
	// gateway.
	Peers []Peer `yaml:"peers"`
	// Split lists the destinations carried through a peer: a route
	// without listen sends the connections apps under the shim make to
	// its prefix through the peer.
	Split []SplitRoute `yaml:"split"`
	// Expose lists what each peer may reach through this isolator.
	Expose []Expose `yaml:"expose"`
}

// SplitTunnel returns the split gateway's configuration, and false when
// the daemon has neither a split key nor peers and runs no gateway.
func (c *Config) SplitTunnel() (Split, bool) {
	if c.SplitKey == "" && len(c.Peers) == 0 && len(c.Split) == 0 && len(c.Expose) == 0 {
		return Split{}, false
	}
	st := c.SplitStatus
	if st == "" {
		st = DefaultSplitStatus
	}
	return Split{Key: c.SplitKey, Status: st, Peers: c.Peers, Routes: c.Split, Expose: c.Expose}, true
}

// Bounds and default of OrphanTimeout.
const (
	DefaultOrphanTimeout = 15 * time.Minute
	MinOrphanTimeout     = time.Second
	MaxOrphanTimeout     = 7 * 24 * time.Hour
)

// Orphan is the orphan timeout in effect: OrphanTimeout, or its default.
func (c *Config) Orphan() time.Duration {
	if c.OrphanTimeout == 0 {
		return DefaultOrphanTimeout
	}
	return c.OrphanTimeout
}

// MaxDNSTimeout is the largest DNSTimeout accepted.
const MaxDNSTimeout = time.Minute

// ParseNameserver parses a nameserver: "ADDR", "ADDR:PORT" or
// "[IPV6]:PORT"; the port defaults to 53.
func ParseNameserver(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("nameserver %q: zones are not supported", s)
		}
		return netip.AddrPortFrom(a, 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("nameserver %q: want an IP address, ADDR:PORT or [IPV6]:PORT", s)
	}
	return ap, nil
}

// Nameservers returns the parsed DNS list.
func (c *Config) Nameservers() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range c.DNS {
		ap, err := ParseNameserver(s)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}

// Uplink is one host interface and the addresses its INS NICs take.
type Uplink struct {
	// Name identifies the uplink in the CLIs and in flow records.
	Name string `yaml:"name"`
	// Interface is the host interface (in NetNS) whose macvlan children
	// the INS use.
	Interface string `yaml:"interface"`
	// Pool4 is the first IPv4 address handed to an INS with the subnet's
	// prefix length, e.g. 10.77.0.10/24; INS n gets the n-th free address.
	Pool4 string `yaml:"pool4"`
	// Gateway4 is the IPv4 next hop for destinations off the subnet.
	Gateway4 string `yaml:"gateway4"`
	// Pool6 and Gateway6 are the IPv6 counterparts (optional).
	Pool6    string `yaml:"pool6"`
	Gateway6 string `yaml:"gateway6"`
	// Weight is the uplink's share of new outbound flows (its capacity).
	Weight int `yaml:"weight"`
	// Backend is how each INS reads and writes this uplink's frames:
	// "packet" (AF_PACKET, the default) or "xdp" (AF_XDP fed by an XDP
	// program on the INS's macvlan).
	Backend string `yaml:"backend"`
	// GSO is "on" or "off": with it, INS TCP hands segments of up to
	// 64 KiB to the kernel, which splits them into frames. Empty means
	// DefaultGSO.
	GSO string `yaml:"gso"`
	// VIPs are service addresses (IPv4 and IPv6) that every INS holds on
	// this uplink and that the daemon's load balancer on Interface
	// steers to one INS per flow (docs/design.md, "lb"). An IPv6 VIP needs
	// pool6. A VIP must not be one of the pool's addresses.
	VIPs []string `yaml:"vips"`
	// Tunnel4 is this host's IPv4 address on Interface (the host holds
	// it, not the INS): the source of the IP-in-IP packets the balancer
	// sends to Remotes, and the address other LB hosts send theirs to
	// (their outer header is removed and the packet steered to this
	// host's INS).
	Tunnel4 string `yaml:"tunnel4"`
	// Remotes are other isolator hosts whose INS serve this uplink's VIPs
	// too: each is one member of the pool with its weight, reached in
	// IP-in-IP to its tunnel4.
	Remotes []Remote `yaml:"remotes"`
	// GUE, if set, is a UDP port: packets to Remotes go in GUE (variant
	// 1) to that port of their tunnel4 instead of IP-in-IP, and this
	// host's balancer takes GUE to that port of Tunnel4 as well.
	GUE int `yaml:"gue"`
}

// Remote is another isolator host behind this one's balancer.
type Remote struct {
	// Name names it in the Maglev table and in `isolator lb status`.
	Name string `yaml:"name"`
	// Tunnel4 is its tunnel4 address.
	Tunnel4 string `yaml:"tunnel4"`
	// Weight is its share of new flows (0 means 1).
	Weight int `yaml:"weight"`
}

// TunnelAddrs parses Tunnel4 and the remotes' addresses ("" gives an
// invalid Addr).
func (u *Uplink) TunnelAddrs() (netip.Addr, []netip.Addr, error) {
	parse := func(what, s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
			return netip.Addr{}, fmt.Errorf("uplink %q: %s %q: want an IPv4 unicast address", u.Name, what, s)
		}
		return a, nil
	}
	var own netip.Addr
	if u.Tunnel4 != "" {
		var err error
		if own, err = parse("tunnel4", u.Tunnel4); err != nil {
			return own, nil, err
		}
	}
	if len(u.Remotes) > 0 && (!own.IsValid() || len(u.VIPs) == 0) {
		return own, nil, fmt.Errorf("uplink %q: remotes need vips and tunnel4 on the uplink", u.Name)
	}
	if u.GUE < 0 || u.GUE > 65535 || (u.GUE != 0 && !own.IsValid()) {
		return own, nil, fmt.Errorf("uplink %q: gue %d: want a UDP port 1..65535, with tunnel4", u.Name, u.GUE)
	}
	var out []netip.Addr
	names := map[string]bool{}
	for _, r := range u.Remotes {
		if r.Name == "" || strings.ContainsAny(r.Name, " \t/,=") || names[r.Name] {
			return own, nil, fmt.Errorf("uplink %q: remote %q: want a unique name without spaces, '/', ',' or '='", u.Name, r.Name)
		}
		names[r.Name] = true
		if r.Weight < 0 || r.Weight > 1<<16 {
			return own, nil, fmt.Errorf("uplink %q: remote %s: weight %d: want 1..65536", u.Name, r.Name, r.Weight)
		}
		a, err := parse("remote "+r.Name+" tunnel4", r.Tunnel4)
		if err != nil {
			return own, nil, err
		}
		if a == own {
			return own, nil, fmt.Errorf("uplink %q: remote %s: tunnel4 %v is this host's", u.Name, r.Name, a)
		}
		out = append(out, a)
	}
	return own, out, nil
}

// VIPAddrs parses VIPs.
func (u *Uplink) VIPAddrs() ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range u.VIPs {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("uplink %q: vip %q: want an IPv4 or IPv6 address", u.Name, s)
		}
		a = a.Unmap()
		if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
			return nil, fmt.Errorf("uplink %q: vip %v: want a unicast address that is not loopback or link-local", u.Name, a)
		}
		pool := u.Pool4
		if a.Is6() {
			pool = u.Pool6
		}
		if pool == "" {
			return nil, fmt.Errorf("uplink %q: vip %v: the uplink has no pool6 (its INS need an address of the VIP's family)", u.Name, a)
		}
		if p, err := netip.ParsePrefix(pool); err == nil && p.Masked().Contains(a) && a.Compare(p.Addr()) >= 0 {
			return nil, fmt.Errorf("uplink %q: vip %v is inside the INS address pool %s (from %v to the end of the subnet): take one below it", u.Name, a, pool, p.Addr())
		}
		if slices.Contains(out, a) {
			return nil, fmt.Errorf("uplink %q: vip %v given twice", u.Name, a)
		}
		out = append(out, a)
	}
	return out, nil
}

// Backends are the valid Uplink.Backend values, the default first.
var Backends = []string{"packet", "xdp"}

// DefaultGSO is whether an uplink uses GSO when Uplink.GSO is empty:
// bench/link measured it to cut the INS's CPU time per byte sent about
// fivefold, and never slower.
const DefaultGSO = true

// GSOEnabled resolves u.GSO: "on" or "off", else DefaultGSO.
func (u *Uplink) GSOEnabled() bool {
	switch u.GSO {
	case "on":
		return true
	case "off":
		return false
	}
	return DefaultGSO
}

// Mode is a file permission written in octal in YAML ("0660").
type Mode uint32

// UnmarshalYAML reads an octal string or number.
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	var v uint32
	if _, err := fmt.Sscanf(n.Value, "%o", &v); err != nil || v > 0o777 {
		return fmt.Errorf("socket_mode %q: want an octal permission such as 0660", n.Value)
	}
	*m = Mode(v)
	return nil
}

// Default returns a configuration with every default filled in and no
// uplinks.
func Default() Config {
	return Config{INS: 1, Policy: "wrr", Socket: DefaultSocket, SocketMode: 0o600, API: DefaultAPI, MaxINS: 64, StateDir: DefaultStateDir, Flows: DefaultFlows()}
}

// Load reads a YAML file over the defaults.
func Load(path string) (Config, error) {
	c := Default()
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseUplinkFlag parses the command-line form of an uplink:
// NAME=IFACE,pool4=A/N,gw4=A[,pool6=A/N,gw6=A][,weight=W][,backend=B][,gso=on|off].
func ParseUplinkFlag(s string) (Uplink, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return Uplink{}, fmt.Errorf("uplink %q: want NAME=IFACE,pool4=ADDR/LEN,gw4=ADDR[,weight=N]", s)
	}
	parts := strings.Split(rest, ",")
	u := Uplink{Name: name, Interface: parts[0], Weight: 1}
	for _, kv := range parts[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return Uplink{}, fmt.Errorf("uplink %q: %q is not key=value", s, kv)
		}
		switch k {
		case "pool4":
			u.Pool4 = v
		case "gw4":
			u.Gateway4 = v
		case "pool6":
			u.Pool6 = v
		case "gw6":
			u.Gateway6 = v
		case "weight":
			if _, err := fmt.Sscanf(v, "%d", &u.Weight); err != nil {
				return Uplink{}, fmt.Errorf("uplink %q: weight %q: %w", s, v, err)
			}
		case "backend":
			u.Backend = v
		case "gso":
			u.GSO = v
		case "vip":
			u.VIPs = append(u.VIPs, v)
		case "tunnel4":
			u.Tunnel4 = v
		case "gue":
			if _, err := fmt.Sscanf(v, "%d", &u.GUE); err != nil {
				return Uplink{}, fmt.Errorf("uplink %q: gue %q: %w", s, v, err)
			}
		default:
			return Uplink{}, fmt.Errorf("uplink %q: unknown key %q (pool4, gw4, pool6, gw6, weight, backend, gso, vip, tunnel4, gue)", s, k)
		}
	}
	return u, nil
}

// Validate checks the whole configuration and says what to fix.
func (c *Config) Validate() error {
	var errs []error
	if c.INS < 0 || c.MaxINS < 1 || c.INS > c.MaxINS {
		errs = append(errs, fmt.Errorf("ins %d: want 0..max_ins (%d)", c.INS, c.MaxINS))
	}
	if !contains(Policies, c.Policy) {
		errs = append(errs, fmt.Errorf("policy %q: want one of %s", c.Policy, strings.Join(Policies, ", ")))
	}
	for _, p := range []struct{ what, path string }{{"socket", c.Socket}, {"api", c.API}, {"state_dir", c.StateDir}} {
		if !filepath.IsAbs(p.path) {
			errs = append(errs, fmt.Errorf("%s %q: want an absolute path", p.what, p.path))
		}
	}
	if c.INSUIDs != "" {
		if _, _, err := parseUIDRange(c.INSUIDs); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := c.Nameservers(); err != nil {
		errs = append(errs, fmt.Errorf("dns: %w", err))
	}
	if c.DNSTimeout < 0 || c.DNSTimeout > MaxDNSTimeout {
		errs = append(errs, fmt.Errorf("dns_timeout %v: want 0 (default) up to %v", c.DNSTimeout, MaxDNSTimeout))
	}
	if c.OrphanTimeout != 0 && (c.OrphanTimeout < MinOrphanTimeout || c.OrphanTimeout > MaxOrphanTimeout) {
		errs = append(errs, fmt.Errorf("orphan_timeout %v: want 0 (default %v) or %v to %v", c.OrphanTimeout, DefaultOrphanTimeout, MinOrphanTimeout, MaxOrphanTimeout))
	}
	errs = append(errs, c.validateMonitoring())
	if c.Autoscale != "" {
		if as, err := autoscale.ParseConfig(c.Autoscale); err != nil {
			errs = append(errs, err)
		} else if as.Max > c.MaxINS {
			errs = append(errs, fmt.Errorf("autoscale max=%d above max_ins %d", as.Max, c.MaxINS))
		} else if !slices.ContainsFunc(c.Uplinks, func(u Uplink) bool { return len(u.VIPs) > 0 }) {
			errs = append(errs, errors.New("autoscale: no uplink has VIPs (--vip or vips:) to balance"))
		}
	}
	if st, ok := c.SplitTunnel(); ok {
		if err := st.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("split tunnel: %w", err))
		}
	}
	seen := map[string]bool{}
	vipOwner := map[netip.Addr]string{}
	for i := range c.Uplinks {
		u := &c.Uplinks[i]
		if u.Weight == 0 {
			u.Weight = 1
		}
		if err := u.Validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[u.Name] {
			errs = append(errs, fmt.Errorf("uplink %q: name used twice", u.Name))
		}
		vips, _ := u.VIPAddrs()
		for _, v := range vips {
			if other, ok := vipOwner[v]; ok {
				errs = append(errs, fmt.Errorf("uplink %q: vip %v is also on uplink %q", u.Name, v, other))
			}
			vipOwner[v] = u.Name
		}
		seen[u.Name] = true
	}
	return errors.Join(errs...)
}

// Validate checks one uplink.
func (u *Uplink) Validate() error {
	var errs []error
	if u.Name == "" || strings.ContainsAny(u.Name, " \t/,=") {
		errs = append(errs, fmt.Errorf("uplink %q: want a name without spaces, '/', ',' or '='", u.Name))
	}
	if u.Interface == "" {
		errs = append(errs, fmt.Errorf("uplink %q: interface missing", u.Name))
	}
	if u.Weight < 1 {
		errs = append(errs, fmt.Errorf("uplink %q: weight %d: want ≥ 1", u.Name, u.Weight))
	}
	if u.Backend != "" && !contains(Backends, u.Backend) {
		errs = append(errs, fmt.Errorf("uplink %q: backend %q: want one of %s", u.Name, u.Backend, strings.Join(Backends, ", ")))
	}
	switch u.GSO {
	case "", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("uplink %q: gso %q: want on or off", u.Name, u.GSO))
	}
	p4, err := netip.ParsePrefix(u.Pool4)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("uplink %q: pool4 %q: want the first INS address with its prefix length, e.g. 10.77.0.10/24", u.Name, u.Pool4))
	case !p4.Addr().Is4():
		errs = append(errs, fmt.Errorf("uplink %q: pool4 %q is not IPv4", u.Name, u.Pool4))
	}
	if u.Gateway4 != "" {
		if gw, err := netip.ParseAddr(u.Gateway4); err != nil || !gw.Is4() || (p4.IsValid() && !p4.Masked().Contains(gw)) {
			errs = append(errs, fmt.Errorf("uplink %q: gateway4 %q: want an IPv4 address inside %s", u.Name, u.Gateway4, p4.Masked()))
		}
	}
	if u.Pool6 != "" {
		p6, err := netip.ParsePrefix(u.Pool6)
		if err != nil || !p6.Addr().Is6() || p6.Addr().Is4In6() {
			errs = append(errs, fmt.Errorf("uplink %q: pool6 %q: want an IPv6 address with prefix length", u.Name, u.Pool6))
		} else if u.Gateway6 != "" {
			if gw, err := netip.ParseAddr(u.Gateway6); err != nil || !gw.Is6() {
				errs = append(errs, fmt.Errorf("uplink %q: gateway6 %q: want an IPv6 address", u.Name, u.Gateway6))
			}
		}
	}
	if _, err := u.VIPAddrs(); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := u.TunnelAddrs(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
