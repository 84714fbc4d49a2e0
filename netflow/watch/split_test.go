package watch

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/split/gateway"
	"github.com/mpshim/mpshim/isolator/split/tunnel"
)

func TestRenderSplit(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	many := make([]gateway.StreamStatus, maxSplitStreams+5)
	for i := range many {
		many[i] = gateway.StreamStatus{ID: uint64(i + 1), Dir: gateway.DirIn, Dst: netip.MustParseAddrPort("10.30.0.1:22"), Since: now}
	}
	for _, c := range []struct {
		name  string
		peers []gateway.PeerStatus
		want  []string
		not   []string
	}{
		{"none", nil, nil, []string{"SPLIT"}},
		{"down", []gateway.PeerStatus{{Name: "b", Sessions: 2}}, []string{"SPLIT PEER b", "down", "sessions 2"}, []string{"SUBFLOW", "STREAM"}},
		{"up", []gateway.PeerStatus{{
			Name: "b", Up: true, Since: now.Add(-90 * time.Second), Sessions: 1,
			Paths: []tunnel.PathStats{
				{Link: "10.77.0.2:7000->10.77.0.1:7000", Up: true, SRTT: 11 * time.Millisecond, RateMbit: 95.5, Share: 0.6, Loss: 0.001, BytesSent: 3 << 20},
				{Link: "10.77.1.2:7000->10.77.1.1:7000", Up: true, Suspect: true},
				{Link: "10.77.2.2:7000->10.77.2.1:7000"},
			},
			Carried: []gateway.StreamStatus{{ID: 7, Dir: gateway.DirOut, Dst: netip.MustParseAddrPort("10.20.0.5:8080"), Since: now.Add(-3 * time.Second), Sent: 100, Received: 5 << 20}},
		}}, []string{"SPLIT PEER b", "up 1m30s", "streams 1", "95.5 Mbit/s", "60%", "0.10%", "suspect", "down", "10.77.2.2:7000->10.77.2.1:7000", "out", "10.20.0.5:8080", "3s"}, nil},
		{"many streams", []gateway.PeerStatus{{Name: "a", Up: true, Since: now, Carried: many}}, []string{"5 more", "10.30.0.1:22"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := RenderSplit(&b, c.peers, now); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("no %q in\n%s", w, out)
				}
			}
			for _, w := range c.not {
				if strings.Contains(out, w) {
					t.Errorf("%q in\n%s", w, out)
				}
			}
			if c.name == "many streams" && strings.Count(out, "10.30.0.1:22") != maxSplitStreams {
				t.Errorf("%d stream lines, want %d:\n%s", strings.Count(out, "10.30.0.1:22"), maxSplitStreams, out)
			}
		})
	}
}
