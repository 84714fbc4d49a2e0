package isolator

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
)

// TestRelayINSOutput: what an INS writes reaches the daemon's log line by
// line, each labelled with the INS id, with control characters replaced
// and an overlong line cut, not split into lines the INS could shape.
func TestRelayINSOutput(t *testing.T) {
	var got bytes.Buffer
	insOutputMu.Lock()
	prev := insOutput
	insOutput = &got
	insOutputMu.Unlock()
	defer func() { insOutputMu.Lock(); insOutput = prev; insOutputMu.Unlock() }()

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { relayINSOutput(7, r); close(done) }()
	long := strings.Repeat("x", 3*maxINSLine) + "time=forged level=INFO msg=daemon"
	w.WriteString("INS serving\n\x1b[2Jescape\r\n" + long + "\nlast without newline")
	w.Close()
	<-done
	lines := strings.Split(strings.TrimSuffix(got.String(), "\n"), "\n")
	want := []string{"ins[7] INS serving", "ins[7] ?[2Jescape?", "", "ins[7] last without newline"}
	if len(lines) != len(want) {
		t.Fatalf("relayed %d lines, want %d:\n%s", len(lines), len(want), got.String())
	}
	for i, l := range lines {
		if i == 2 {
			if !strings.HasPrefix(l, "ins[7] xxx") || !strings.HasSuffix(l, "…(cut)") || len(l) > maxINSLine+32 {
				t.Errorf("overlong line relayed as %d bytes: %.40q…%q", len(l), l, l[max(0, len(l)-20):])
			}
			continue
		}
		if l != want[i] {
			t.Errorf("line %d = %q, want %q", i, l, want[i])
		}
	}
}

// TestSandboxProbeHidden: without MPSHIM_SANDBOX_PROBE=1 in its
// environment the daemon does not know the probe request.
func TestSandboxProbeHidden(t *testing.T) {
	t.Setenv(sandbox.ProbeEnv, "")
	d := newTestDaemon(t, t.TempDir())
	resp := d.handle(context.Background(), api.Request{Op: api.OpSandboxProbe})
	if resp.OK || !strings.Contains(resp.Error, "unknown operation") || resp.Probes != nil {
		t.Fatalf("sandbox-probe without %s: %+v", sandbox.ProbeEnv, resp)
	}
}
