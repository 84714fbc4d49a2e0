package isolator

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/test/harness"
)

func newTestDaemon(t *testing.T, dir string) *Daemon {
	t.Helper()
	harness.EnsureINSUser(t)
	cfg := config.Default()
	cfg.StateDir = dir
	d, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

// TestMitigationRequests drives the daemon's mitigation operations without
// INS: validation and refusals, ids, and the state file that a new daemon
// reads back.
func TestMitigationRequests(t *testing.T) {
	dir := t.TempDir()
	d := newTestDaemon(t, dir)
	ctx := context.Background()
	call := func(op string, a api.MitigationRequest) api.Response {
		return d.handle(ctx, api.Request{Op: op, Mitigation: &a})
	}
	steps := []struct {
		op      string
		a       api.MitigationRequest
		ok      bool
		wantMsg string
	}{
		{api.OpBlock, api.MitigationRequest{Prefix: "10.77.0.0/24"}, true, "rule 1 added: block 10.77.0.0/24"},
		{api.OpBlock, api.MitigationRequest{Prefix: "10.77.0.0/24"}, false, "duplicate rule: rule 1"},
		{api.OpBlock, api.MitigationRequest{Prefix: "10.77.0.1/24"}, false, "did you mean 10.77.0.0/24"},
		{api.OpBlock, api.MitigationRequest{Prefix: "nonsense"}, false, "bad prefix"},
		{api.OpLimit, api.MitigationRequest{Prefix: "fd77::/64", BPS: 10_000_000}, true, "rule 2 added: limit fd77::/64 10 Mbit/s"},
		{api.OpLimit, api.MitigationRequest{Prefix: "10.0.0.0/8", PPS: 20_000_000}, false, "out of range"},
		{api.OpLimit, api.MitigationRequest{Prefix: "10.0.0.0/8"}, false, "exactly one of pps or bps"},
		{api.OpUnblock, api.MitigationRequest{Prefix: "10.99.0.0/16"}, false, "no block rule for 10.99.0.0/16"},
		{api.OpUnlimit, api.MitigationRequest{Prefix: "10.77.0.0/24"}, false, "no limit rule"},
		{api.OpRuleRemove, api.MitigationRequest{Rule: 9}, false, "no such rule: 9"},
		{api.OpLimit, api.MitigationRequest{Prefix: "10.0.0.0/8", PPS: 1000}, true, "rule 3 added"},
		{api.OpUnlimit, api.MitigationRequest{Prefix: "10.0.0.0/8"}, true, "rule 3 removed"},
		{api.OpReset, api.MitigationRequest{Flow: "1-0123456789ab"}, false, "no INS 1"},
		{api.OpReset, api.MitigationRequest{Flow: "bogus"}, false, "want <ins>-<12 hex digits>"},
		{api.OpTune, api.MitigationRequest{INS: "all", Settings: []string{"backlog=128", "syn-cookies=always"}}, true, "tune all backlog=128 syn-cookies=always"},
		{api.OpTune, api.MitigationRequest{INS: "all", Settings: []string{"rcvbuf=16M"}}, false, "rcvbuf 16777216 exceeds rcvbuf-max"},
		{api.OpTune, api.MitigationRequest{INS: "all", Settings: []string{"frobnicate=1"}}, false, "unknown key"},
		{api.OpTune, api.MitigationRequest{INS: "7", Settings: []string{"backlog=1"}}, false, "no INS 7"},
		{api.OpTune, api.MitigationRequest{INS: "x", Settings: []string{"backlog=1"}}, false, "want an INS id"},
	}
	for _, s := range steps {
		resp := call(s.op, s.a)
		msg := resp.Error
		if resp.Mitigation != nil && resp.OK {
			msg = resp.Mitigation.Summary
		}
		if resp.OK != s.ok || !strings.Contains(msg, s.wantMsg) {
			t.Errorf("%s %+v: ok=%v %q; want ok=%v and %q", s.op, s.a, resp.OK, msg, s.ok, s.wantMsg)
		}
		if !s.ok && !strings.HasPrefix(resp.Error, "refused: ") {
			t.Errorf("%s %+v: error %q does not say refused", s.op, s.a, resp.Error)
		}
	}
	resp := call(api.OpRules, api.MitigationRequest{})
	if !resp.OK || len(resp.Mitigation.Rules) != 2 || resp.Mitigation.Rules[0].ID != 1 || resp.Mitigation.Rules[1].ID != 2 {
		t.Fatalf("rules: %+v", resp.Mitigation)
	}

	// A new daemon on the same state directory has the same rules and
	// tunings, and goes on numbering.
	d2 := newTestDaemon(t, dir)
	st := d2.mit.config(1)
	if len(st.Rules.Rules) != 2 || st.Rules.Rules[1].Prefix.String() != "fd77::/64" || st.Tune["backlog"] != "128" || st.Tune["syn-cookies"] != "always" {
		t.Fatalf("reloaded state: %+v", st)
	}
	d = d2
	if r := call(api.OpBlock, api.MitigationRequest{Prefix: "192.0.2.0/24"}); !r.OK || r.Mitigation.Rule.ID != 4 {
		t.Fatalf("block after restart: %+v", r)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != stateFile {
		t.Fatalf("state directory holds %v", ents)
	}
}

func TestMitigationStateRefusesBadFile(t *testing.T) {
	for name, content := range map[string]string{
		"not json":      "{",
		"invalid rule":  `{"rules":{"version":1,"next_id":2,"rules":[{"id":1,"action":"block","prefix":"10.0.0.1/8"}]}}`,
		"invalid tune":  `{"rules":{"version":0,"next_id":0,"rules":[]},"tune":{"backlog":"0"}}`,
		"duplicate ids": `{"rules":{"version":1,"next_id":3,"rules":[{"id":1,"action":"block","prefix":"10.0.0.0/8"},{"id":1,"action":"block","prefix":"11.0.0.0/8"}]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, stateFile), []byte(content), 0o600)
			harness.EnsureINSUser(t)
			cfg := config.Default()
			cfg.StateDir = dir
			if _, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "fix or remove") {
				t.Fatalf("New with a bad state file: %v", err)
			}
		})
	}
}
