package main

import (
	"github.com/spf13/pflag"

	"github.com/mpshim/mpshim/isolator/config"
)

// monitorFlags are the `isolator run` flags of flow accounting, export,
// metrics and the remote API. They override a configuration file only
// where given.
type monitorFlags struct {
	v config.Config
}

func newMonitorFlags() *monitorFlags {
	return &monitorFlags{v: config.Default()}
}

func (m *monitorFlags) register(f *pflag.FlagSet) {
	v := &m.v
	f.BoolVar(&v.Flows.Disable, "no-flows", false, "turn flow accounting off in every INS (no watch, no export)")
	f.IntVar(&v.Flows.MaxFlows, "flow-max", v.Flows.MaxFlows, "most flows per INS flow table (the least recently used is evicted)")
	f.DurationVar(&v.Flows.IdleTimeout, "flow-idle-timeout", v.Flows.IdleTimeout, "end a flow without packets for this long")
	f.DurationVar(&v.Flows.ActiveTimeout, "flow-active-timeout", v.Flows.ActiveTimeout, "export a long flow's counts this often")
	f.StringArrayVar(&v.Flows.IPFIX, "ipfix", nil, "IPFIX collector HOST:PORT (UDP) for every flow record (repeatable)")
	f.StringArrayVar(&v.Flows.NetFlow9, "netflow9", nil, "NetFlow v9 collector HOST:PORT (UDP) for every flow record (repeatable)")
	f.DurationVar(&v.Flows.TemplateRefresh, "ipfix-template-refresh", v.Flows.TemplateRefresh, "re-send IPFIX and NetFlow v9 templates this often")
	f.StringVar(&v.MetricsListen, "metrics-listen", "", "serve Prometheus /metrics on this HOST:PORT")
	f.StringVar(&v.RemoteAPI.Listen, "api-listen", "", "also serve the API on this HOST:PORT over TLS (needs --api-token-file)")
	f.StringVar(&v.RemoteAPI.TokenFile, "api-token-file", "", "token remote API clients must present (created if missing)")
	f.StringVar(&v.RemoteAPI.CertFile, "api-cert-file", "", "TLS key and self-signed certificate of the remote API (created if missing; default: token file + .pem)")
}

// apply copies the flags that were given into c.
func (m *monitorFlags) apply(f *pflag.FlagSet, c *config.Config) {
	v := &m.v
	set := map[string]func(){
		"no-flows":               func() { c.Flows.Disable = v.Flows.Disable },
		"flow-max":               func() { c.Flows.MaxFlows = v.Flows.MaxFlows },
		"flow-idle-timeout":      func() { c.Flows.IdleTimeout = v.Flows.IdleTimeout },
		"flow-active-timeout":    func() { c.Flows.ActiveTimeout = v.Flows.ActiveTimeout },
		"ipfix":                  func() { c.Flows.IPFIX = v.Flows.IPFIX },
		"netflow9":               func() { c.Flows.NetFlow9 = v.Flows.NetFlow9 },
		"ipfix-template-refresh": func() { c.Flows.TemplateRefresh = v.Flows.TemplateRefresh },
		"metrics-listen":         func() { c.MetricsListen = v.MetricsListen },
		"api-listen":             func() { c.RemoteAPI.Listen = v.RemoteAPI.Listen },
		"api-token-file":         func() { c.RemoteAPI.TokenFile = v.RemoteAPI.TokenFile },
		"api-cert-file":          func() { c.RemoteAPI.CertFile = v.RemoteAPI.CertFile },
	}
	for name, fn := range set {
		if f.Changed(name) {
			fn()
		}
	}
}
