package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/mpshim/mpshim/isolator/split/seal"
)

// DefaultSplitStatus is the socket `isolator peer ls` reads.
const DefaultSplitStatus = "/run/mpshim/split.sock"

// Split configures `isolator split run`, the split-tunnel gateway: this
// isolator's key, its peers with one path per uplink pair, the
// destinations carried through a peer and those a peer may reach here.
type Split struct {
	// Key is the file holding this isolator's private key (base64, as
	// `isolator split keygen` writes it).
	Key string `yaml:"key"`
	// Status is the unix socket serving `isolator peer ls`.
	Status string `yaml:"status"`
	// Peers are the other isolators.
	Peers []Peer `yaml:"peers"`
	// Routes are the destinations carried through a peer.
	Routes []SplitRoute `yaml:"split"`
	// Expose lists what each peer may reach through this isolator.
	Expose []Expose `yaml:"expose"`
	// Handoff, if set, is the unix socket on which the isolator daemon
	// hands the gateway the connections of apps under the shim to
	// destinations of routes without a listener.
	Handoff string `yaml:"handoff"`
}

// Peer is another isolator.
type Peer struct {
	// Name identifies the peer in routes and in `isolator peer ls`.
	Name string `yaml:"name"`
	// Key is the peer's public key (base64).
	Key string `yaml:"key"`
	// Paths are the subflows, one per uplink pair; both sides list them in
	// the same order.
	Paths []PeerPath `yaml:"paths"`
}

// PeerPath is one subflow: a local UDP address on one uplink and the
// peer's UDP endpoint on one of its uplinks.
type PeerPath struct {
	Local    string `yaml:"local"`
	Endpoint string `yaml:"endpoint"`
}

// SplitRoute carries TCP connections to Dst through Peer, which connects
// to the destination from its own address. With Listen, Dst is one
// ADDR:PORT and the connections are those accepted on Listen; without it,
// Dst is a prefix (or one address) and the connections are those that
// apps under the shim make to any destination inside it.
type SplitRoute struct {
	Dst    string `yaml:"dst"`
	Peer   string `yaml:"peer"`
	Listen string `yaml:"listen"`
}

// Expose lets Peer reach destinations inside Dst (a prefix) through this
// isolator.
type Expose struct {
	Peer string `yaml:"peer"`
	Dst  string `yaml:"dst"`
}

// LoadSplit reads and validates a split gateway configuration.
func LoadSplit(path string) (Split, error) {
	s := Split{Status: DefaultSplitStatus}
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("config %s: %w", path, err)
	}
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("config %s: %w", path, err)
	}
	return s, nil
}

// Validate checks the whole split configuration.
func (s *Split) Validate() error {
	var errs []error
	if s.Key == "" {
		errs = append(errs, errors.New("key: the private key file is missing"))
	}
	if s.Status != "" && !filepath.IsAbs(s.Status) {
		errs = append(errs, fmt.Errorf("status %q: want an absolute path", s.Status))
	}
	if s.Handoff != "" && !filepath.IsAbs(s.Handoff) {
		errs = append(errs, fmt.Errorf("handoff %q: want an absolute path", s.Handoff))
	}
	peers := map[string]bool{}
	for _, p := range s.Peers {
		if p.Name == "" || strings.ContainsAny(p.Name, " \t/,=") {
			errs = append(errs, fmt.Errorf("peer %q: want a name without spaces, '/', ',' or '='", p.Name))
		}
		if peers[p.Name] {
			errs = append(errs, fmt.Errorf("peer %q: name used twice", p.Name))
		}
		peers[p.Name] = true
		if _, err := seal.ParsePublicKey(p.Key); err != nil {
			errs = append(errs, fmt.Errorf("peer %q: %w", p.Name, err))
		}
		if len(p.Paths) == 0 || len(p.Paths) > 255 {
			errs = append(errs, fmt.Errorf("peer %q: %d paths, want 1..255", p.Name, len(p.Paths)))
		}
		for i, pp := range p.Paths {
			if _, _, err := pp.Parse(); err != nil {
				errs = append(errs, fmt.Errorf("peer %q: path %d: %w", p.Name, i, err))
			}
		}
	}
	for _, r := range s.Routes {
		if !peers[r.Peer] {
			errs = append(errs, fmt.Errorf("split %s: no peer %q", r.Dst, r.Peer))
		}
		if r.Listen == "" {
			if _, err := r.Prefix(); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if _, err := netip.ParseAddrPort(r.Dst); err != nil {
			errs = append(errs, fmt.Errorf("split dst %q: want ADDR:PORT (with listen)", r.Dst))
		}
		if _, err := netip.ParseAddrPort(r.Listen); err != nil {
			errs = append(errs, fmt.Errorf("split %s: listen %q: want ADDR:PORT", r.Dst, r.Listen))
		}
	}
	for _, e := range s.Expose {
		if !peers[e.Peer] {
			errs = append(errs, fmt.Errorf("expose %s: no peer %q", e.Dst, e.Peer))
		}
		if _, err := netip.ParsePrefix(e.Dst); err != nil {
			errs = append(errs, fmt.Errorf("expose dst %q: want a prefix such as 10.20.0.0/16", e.Dst))
		}
	}
	return errors.Join(errs...)
}

// Parse returns the path's local address and endpoint.
func (p PeerPath) Parse() (local, endpoint netip.AddrPort, err error) {
	local, err = netip.ParseAddrPort(p.Local)
	if err != nil {
		return local, endpoint, fmt.Errorf("local %q: want ADDR:PORT", p.Local)
	}
	endpoint, err = netip.ParseAddrPort(p.Endpoint)
	if err != nil || endpoint.Port() == 0 {
		return local, endpoint, fmt.Errorf("endpoint %q: want ADDR:PORT", p.Endpoint)
	}
	if local.Addr().Is4() != endpoint.Addr().Is4() {
		return local, endpoint, fmt.Errorf("local %s and endpoint %s are of different families", local, endpoint)
	}
	return local, endpoint, nil
}

// Prefix returns the destinations of a route without a listener: Dst as a
// prefix, or as one address.
func (r SplitRoute) Prefix() (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(r.Dst); err == nil {
		if p.Addr().Zone() == "" {
			return p.Masked(), nil
		}
	}
	if a, err := netip.ParseAddr(r.Dst); err == nil && a.Zone() == "" {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("split dst %q: want a prefix such as 10.20.0.0/16 (or ADDR:PORT with listen)", r.Dst)
}

// ShimPrefixes returns the destinations that apps under the shim reach
// through a peer: the routes without a listener, by prefix.
func (s *Split) ShimPrefixes() map[netip.Prefix]string {
	out := map[netip.Prefix]string{}
	for _, r := range s.Routes {
		if r.Listen != "" {
			continue
		}
		if p, err := r.Prefix(); err == nil {
			out[p] = r.Peer
		}
	}
	return out
}

// ParsePeerFlag parses the command-line form of a peer (`isolator peer add
// NAME SPEC`): SPEC is key=BASE64,local=ADDR:PORT,endpoint=ADDR:PORT,... with
// one local and one endpoint per path (the n-th local goes with the n-th
// endpoint), then any number of split=PREFIX (destinations of apps under
// the shim carried through the peer) and expose=PREFIX (what the peer may
// reach here). The peer is checked as a configuration's would be.
func ParsePeerFlag(name, spec string) (p Peer, split, expose []string, err error) {
	p.Name = name
	var locals, endpoints []string
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return p, nil, nil, fmt.Errorf("peer %s: %q: want KEY=VALUE", name, kv)
		}
		switch k {
		case "key":
			if p.Key != "" {
				return p, nil, nil, fmt.Errorf("peer %s: key given twice", name)
			}
			p.Key = v
		case "local":
			locals = append(locals, v)
		case "endpoint":
			endpoints = append(endpoints, v)
		case "split":
			split = append(split, v)
		case "expose":
			expose = append(expose, v)
		default:
			return p, nil, nil, fmt.Errorf("peer %s: unknown key %q (key, local, endpoint, split, expose)", name, k)
		}
	}
	if len(locals) != len(endpoints) {
		return p, nil, nil, fmt.Errorf("peer %s: %d local and %d endpoint: want one of each per path", name, len(locals), len(endpoints))
	}
	for i := range locals {
		p.Paths = append(p.Paths, PeerPath{Local: locals[i], Endpoint: endpoints[i]})
	}
	s := Split{Key: "-", Peers: []Peer{p}}
	for _, d := range split {
		s.Routes = append(s.Routes, SplitRoute{Dst: d, Peer: name})
	}
	for _, d := range expose {
		s.Expose = append(s.Expose, Expose{Dst: d, Peer: name})
	}
	if err := s.Validate(); err != nil {
		return p, nil, nil, err
	}
	return p, split, expose, nil
}
