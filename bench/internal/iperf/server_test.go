package iperf

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/mpshim/mpshim/bench/internal/parse"
)

// TestIperf3Client runs the real iperf3 client against the server on
// loopback, both directions, one and several streams.
func TestIperf3Client(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("iperf3 missing (make test installs it)")
		}
		t.Skip("iperf3 missing (make test installs it)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	for _, tc := range []struct {
		streams int
		reverse bool
	}{{1, true}, {3, true}, {2, false}} {
		t.Run(fmt.Sprintf("P%d-R%v", tc.streams, tc.reverse), func(t *testing.T) {
			args := []string{"-c", "127.0.0.1", "-p", port, "-t", "1", "-P", fmt.Sprint(tc.streams), "-J"}
			if tc.reverse {
				args = append(args, "-R")
			}
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			defer ccancel()
			out, err := exec.CommandContext(cctx, "iperf3", args...).Output()
			if err != nil {
				t.Fatalf("iperf3 %v: %v\n%s", args, err, out)
			}
			r, err := parse.ParseIperf3(out)
			if err != nil {
				t.Fatal(err)
			}
			if r.Streams != tc.streams || r.Reverse != tc.reverse {
				t.Fatalf("report for %d streams reverse=%v, want %d %v", r.Streams, r.Reverse, tc.streams, tc.reverse)
			}
			// The server's byte counts reach the client's report: the
			// sender's sum in reverse mode, the receiver's otherwise.
			var j struct {
				End struct {
					SumSent struct {
						Bytes int64 `json:"bytes"`
					} `json:"sum_sent"`
				} `json:"end"`
			}
			_ = json.Unmarshal(out, &j)
			if j.End.SumSent.Bytes <= 0 || j.End.SumSent.Bytes < r.ReceivedBytes {
				t.Fatalf("sent %d bytes, received %d", j.End.SumSent.Bytes, r.ReceivedBytes)
			}
		})
	}
}

func TestParseParams(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ok   bool
		want Params
	}{
		{`{"tcp":true,"time":10,"parallel":4,"reverse":true,"len":131072}`, true, Params{TCP: true, Time: 10, Parallel: 4, Reverse: true, Len: 131072}},
		{`{"tcp":true,"time":1}`, true, Params{TCP: true, Time: 1, Parallel: 1, Len: 128 << 10}},
		{`{"udp":true,"time":1}`, false, Params{}},
		{`{"tcp":true,"bidirectional":true}`, false, Params{}},
		{`{"tcp":true,"parallel":1000}`, false, Params{}},
		{`{"tcp":true,"num":1000}`, false, Params{}},
		{`{"tcp":true,"len":-1}`, false, Params{}},
		{`[1,2]`, false, Params{}},
	} {
		p, err := ParseParams([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && p != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.in, p, tc.want)
		}
	}
}

func TestStreamID(t *testing.T) {
	for n, want := range []int{1, 3, 4, 5} {
		if got := streamID(n); got != want {
			t.Errorf("streamID(%d) = %d, want %d", n, got, want)
		}
	}
}

func FuzzParseParams(f *testing.F) {
	f.Add([]byte(`{"tcp":true,"time":10,"parallel":4,"reverse":true,"len":131072}`))
	f.Add([]byte(`{"udp":true}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseParams(b)
		if err != nil {
			return
		}
		if p.Parallel < 1 || p.Parallel > maxStreams || p.Len < 1 || p.Len > maxBlock || p.UDP {
			t.Fatalf("accepted %+v", p)
		}
	})
}
