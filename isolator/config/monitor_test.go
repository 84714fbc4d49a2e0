package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadMonitoring(t *testing.T) {
	p := filepath.Join(t.TempDir(), "isolator.yaml")
	os.WriteFile(p, []byte(`
flows:
  max_flows: 1000
  idle_timeout: 5s
  ipfix: ["127.0.0.1:4739", "[::1]:2055"]
  netflow9: ["127.0.0.1:9995"]
metrics_listen: 127.0.0.1:9108
remote_api:
  listen: 0.0.0.0:7443
  token_file: /etc/mpshim/api.token
`), 0o600)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Flows{MaxFlows: 1000, IdleTimeout: 5 * time.Second, ActiveTimeout: 60 * time.Second,
		IPFIX: []string{"127.0.0.1:4739", "[::1]:2055"}, NetFlow9: []string{"127.0.0.1:9995"}, TemplateRefresh: 60 * time.Second}
	if !reflect.DeepEqual(c.Flows, want) || c.MetricsListen != "127.0.0.1:9108" || c.RemoteAPI.Listen != "0.0.0.0:7443" {
		t.Fatalf("loaded %+v %q %+v", c.Flows, c.MetricsListen, c.RemoteAPI)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestValidateMonitoring(t *testing.T) {
	tests := map[string]struct {
		edit func(*Config)
		want string
	}{
		"max flows":     {func(c *Config) { c.Flows.MaxFlows = 0 }, "flows.max_flows"},
		"idle":          {func(c *Config) { c.Flows.IdleTimeout = time.Millisecond }, "flows.idle_timeout"},
		"active":        {func(c *Config) { c.Flows.ActiveTimeout = 48 * time.Hour }, "flows.active_timeout"},
		"collector":     {func(c *Config) { c.Flows.IPFIX = []string{"collector"} }, "flows.ipfix collector"},
		"port":          {func(c *Config) { c.Flows.IPFIX = []string{"h:0"} }, "port"},
		"v9 collector":  {func(c *Config) { c.Flows.NetFlow9 = []string{"h"} }, "flows.netflow9 collector"},
		"ipfix off":     {func(c *Config) { c.Flows.Disable = true; c.Flows.NetFlow9 = []string{"h:1"} }, "need flow accounting"},
		"metrics":       {func(c *Config) { c.MetricsListen = ":x" }, "metrics_listen"},
		"token missing": {func(c *Config) { c.RemoteAPI.Listen = ":7443" }, "remote_api.token_file"},
		"cert relative": {func(c *Config) { c.RemoteAPI = RemoteAPI{Listen: ":1", TokenFile: "/t", CertFile: "c.pem"} }, "remote_api.cert_file"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := Default()
			tt.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error about %s", err, tt.want)
			}
		})
	}
}
