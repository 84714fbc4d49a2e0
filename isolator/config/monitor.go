package config

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"
)

// Flows configures flow accounting in the INS and flow export from the
// daemon.
type Flows struct {
	// Disable turns flow accounting off in every INS (no per-packet
	// work, no flows to watch or export).
	Disable bool `yaml:"disable"`
	// MaxFlows bounds each INS's flow table; when full, the least
	// recently used flow is evicted (and exported).
	MaxFlows int `yaml:"max_flows"`
	// IdleTimeout ends a flow without packets for this long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// ActiveTimeout exports a long flow's counts this often.
	ActiveTimeout time.Duration `yaml:"active_timeout"`
	// IPFIX lists collectors ("host:port", UDP) that get every flow
	// record in IPFIX.
	IPFIX []string `yaml:"ipfix"`
	// NetFlow9 lists collectors ("host:port", UDP) that get every flow
	// record in NetFlow v9.
	NetFlow9 []string `yaml:"netflow9"`
	// TemplateRefresh is how often IPFIX and v9 templates are re-sent.
	TemplateRefresh time.Duration `yaml:"template_refresh"`
}

// DefaultFlows are the flow settings of Default: accounting on, 65536
// flows per INS, 15 s idle and 60 s active timeouts, templates every 60 s.
func DefaultFlows() Flows {
	return Flows{MaxFlows: 65536, IdleTimeout: 15 * time.Second, ActiveTimeout: 60 * time.Second, TemplateRefresh: 60 * time.Second}
}

// RemoteAPI opens the API on TCP, with TLS and a bearer token.
type RemoteAPI struct {
	// Listen is the TCP address ("host:port"); empty keeps the API
	// local (unix socket only).
	Listen string `yaml:"listen"`
	// TokenFile holds the token clients must present.
	TokenFile string `yaml:"token_file"`
	// CertFile holds the daemon's TLS key and self-signed certificate
	// (PEM); it is created on first use. Clients pin its fingerprint.
	// Default: TokenFile with ".pem" appended.
	CertFile string `yaml:"cert_file"`
}

func validAddr(what, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want host:port: %w", what, addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%s %q: port %q: want 1-65535", what, addr, port)
	}
	_ = host
	return nil
}

// validateMonitoring checks the flow, metrics and remote API settings.
func (c *Config) validateMonitoring() error {
	var errs []error
	f := &c.Flows
	if f.MaxFlows < 1 || f.MaxFlows > 1<<24 {
		errs = append(errs, fmt.Errorf("flows.max_flows %d: want 1..%d", f.MaxFlows, 1<<24))
	}
	for _, d := range []struct {
		what string
		v    time.Duration
	}{{"flows.idle_timeout", f.IdleTimeout}, {"flows.active_timeout", f.ActiveTimeout}, {"flows.template_refresh", f.TemplateRefresh}} {
		if d.v < time.Second || d.v > 24*time.Hour {
			errs = append(errs, fmt.Errorf("%s %v: want 1s..24h", d.what, d.v))
		}
	}
	for _, a := range f.IPFIX {
		if err := validAddr("flows.ipfix collector", a); err != nil {
			errs = append(errs, err)
		}
	}
	for _, a := range f.NetFlow9 {
		if err := validAddr("flows.netflow9 collector", a); err != nil {
			errs = append(errs, err)
		}
	}
	if f.Disable && len(f.IPFIX)+len(f.NetFlow9) > 0 {
		errs = append(errs, errors.New("flows.ipfix and flows.netflow9 need flow accounting (flows.disable is set)"))
	}
	if c.MetricsListen != "" {
		if err := validAddr("metrics_listen", c.MetricsListen); err != nil {
			errs = append(errs, err)
		}
	}
	r := &c.RemoteAPI
	if r.Listen != "" {
		if err := validAddr("remote_api.listen", r.Listen); err != nil {
			errs = append(errs, err)
		}
		if r.TokenFile == "" || !filepath.IsAbs(r.TokenFile) {
			errs = append(errs, fmt.Errorf("remote_api.token_file %q: an absolute path is required with remote_api.listen", r.TokenFile))
		}
		if r.CertFile != "" && !filepath.IsAbs(r.CertFile) {
			errs = append(errs, fmt.Errorf("remote_api.cert_file %q: want an absolute path", r.CertFile))
		}
	}
	return errors.Join(errs...)
}
