// Package observe checks the Grafana dashboard in deploy/grafana against a
// real isolator's /metrics scraped by Debian's Prometheus: every PromQL
// expression of the dashboard must be accepted by Prometheus, and every
// metric it references must have a series.
package observe

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title  string  `json:"title"`
	UID    string  `json:"uid"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	Targets    []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "deploy", "grafana", "mpshim.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	return d
}

// expressions are the dashboard's queries, with Grafana's interval variable
// replaced as Grafana would for a short range.
func expressions(t *testing.T, d dashboard) []string {
	t.Helper()
	var out []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if !strings.Contains(string(p.Datasource), "${datasource}") {
			t.Errorf("panel %q does not use the dashboard's data source variable: %s", p.Title, p.Datasource)
		}
		for _, tg := range p.Targets {
			out = append(out, strings.ReplaceAll(tg.Expr, "$__rate_interval", "30s"))
		}
	}
	return out
}

var metricName = regexp.MustCompile(`\bmpshim_[a-z0-9_]+\b`)

// TestDashboardQueries runs the isolator with /metrics, IPFIX export, a
// mitigation rule and some traffic in a test topology, lets Debian's
// Prometheus (on 127.0.0.1 of the gw namespace, data in a temporary
// directory) scrape it, and asks Prometheus' HTTP API for every dashboard
// expression and every metric each one references.
func TestDashboardQueries(t *testing.T) {
	d := loadDashboard(t)
	exprs := expressions(t, d)
	if len(exprs) < 10 {
		t.Fatalf("dashboard has %d queries", len(exprs))
	}
	topo.RequireRoot(t)
	harness.NeedFiles(t, "/usr/bin/prometheus", "/usr/bin/curl")
	tp := topo.New(t, topo.Config{Uplinks: 2})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 2, Args: []string{
		"--metrics-listen", "127.0.0.1:9108", "--ipfix", "127.0.0.1:4739"}})
	// A mitigation rule, so that the rule counters have series.
	if b, err := exec.Command(harness.Binary(t, "netflow"), "--api", iso.API, "block", "198.51.100.0/24").CombinedOutput(); err != nil {
		t.Fatalf("netflow block: %v\n%s", err, b)
	}
	// Traffic to every INS address from wan: connections refused by the
	// INS, which are flows on both uplinks.
	infos, err := iso.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		for _, u := range in.Uplinks {
			addr := strings.Split(u.Addr4, "/")[0]
			tp.WAN.Run(context.Background(), "curl", "-s", "--max-time", "2", "http://"+addr+":81/")
		}
	}

	dir := t.TempDir()
	conf := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(conf, []byte(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: mpshim
    static_configs: [{targets: ["127.0.0.1:9108"]}]
`), 0o644)
	prom, err := tp.GW.Start(context.Background(), "/usr/bin/prometheus", "--config.file="+conf,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address=127.0.0.1:9090", "--log.level=warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := prom.Stop(); err != nil {
			t.Errorf("stopping prometheus (pid %d): %v", prom.PID(), err)
		}
		if t.Failed() {
			t.Logf("prometheus output:\n%s", prom.Output())
		}
	})
	query := func(q string) ([]json.RawMessage, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := tp.GW.Command(ctx, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9090/api/v1/query?query="+url.QueryEscape(q)).Output()
		if err != nil {
			return nil, fmt.Errorf("query %q: %w", q, err)
		}
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			return nil, fmt.Errorf("query %q: %w: %.200s", q, err, out)
		}
		if r.Status != "success" {
			return nil, fmt.Errorf("query %q: %s", q, r.Error)
		}
		return r.Data.Result, nil
	}
	// Wait until Prometheus has scraped the daemon several times, so that
	// rate() over the window has points.
	deadline := time.Now().Add(90 * time.Second)
	for {
		res, err := query(`count_over_time(up{job="mpshim"}[1m]) >= 4 and up{job="mpshim"} == 1`)
		if err == nil && len(res) == 1 {
			break
		}
		select {
		case <-prom.Done():
			t.Fatalf("prometheus exited:\n%s", prom.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus did not scrape the isolator 4 times within 90 s (last: %v %s)", err, res)
		}
		time.Sleep(500 * time.Millisecond)
	}

	names := map[string]bool{}
	for _, e := range exprs {
		if _, err := query(e); err != nil {
			t.Errorf("dashboard expression rejected: %v", err)
		}
		refs := metricName.FindAllString(e, -1)
		if len(refs) == 0 {
			t.Errorf("dashboard expression %q references no mpshim metric", e)
		}
		for _, n := range refs {
			names[n] = true
		}
	}
	var checked []string
	for n := range names {
		res, err := query(n)
		if err != nil {
			t.Error(err)
			continue
		}
		if len(res) == 0 {
			t.Errorf("metric %s, which the dashboard queries, has no series", n)
		}
		checked = append(checked, n)
	}
	slices.Sort(checked)
	t.Logf("%d dashboard expressions run; %d metrics looked up: %s", len(exprs), len(checked), strings.Join(checked, " "))
}
