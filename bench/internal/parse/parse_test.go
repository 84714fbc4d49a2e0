package parse

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readFixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseWrk(t *testing.T) {
	for _, tc := range []struct {
		file        string
		rps         float64
		requests    int64
		p50, p99    time.Duration
		non2xx      int64
		wantRunFail bool
	}{
		{file: "wrk.txt", rps: 45386.94, requests: 49926, p50: 143 * time.Microsecond, p99: 19650 * time.Microsecond},
		{file: "wrk_non2xx.txt", rps: 51727.07, requests: 56899, p50: 118 * time.Microsecond, p99: 3760 * time.Microsecond, non2xx: 56899, wantRunFail: true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			w, err := ParseWrk(readFixture(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if w.RPS != tc.rps || w.Requests != tc.requests || w.P50 != tc.p50 || w.P99 != tc.p99 || w.Non2xx != tc.non2xx {
				t.Errorf("got %+v, want rps %v requests %d p50 %v p99 %v non2xx %d", w, tc.rps, tc.requests, tc.p50, tc.p99, tc.non2xx)
			}
			if w.Duration != 1100*time.Millisecond {
				t.Errorf("duration %v, want 1.1s", w.Duration)
			}
			if (w.Err() != nil) != tc.wantRunFail {
				t.Errorf("Err() = %v, want failure %v", w.Err(), tc.wantRunFail)
			}
		})
	}
}

func TestParseWrkSocketErrors(t *testing.T) {
	out := readFixture(t, "wrk.txt")
	out = strings.Replace(out, "Requests/sec:", "  Socket errors: connect 0, read 5, write 1, timeout 2\nRequests/sec:", 1)
	w, err := ParseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if w.SocketErrors != 8 || w.Err() == nil {
		t.Fatalf("socket errors %d, Err %v; want 8 and an error", w.SocketErrors, w.Err())
	}
}

func TestParseWrkRejects(t *testing.T) {
	full := readFixture(t, "wrk.txt")
	for name, out := range map[string]string{
		"empty":          "",
		"refused":        "unable to connect to 10.77.0.10:80 Connection refused\n",
		"no percentiles": strings.Replace(full, "     99%   19.65ms\n", "", 1),
		"no rps":         strings.Replace(full, "Requests/sec:", "Requests:", 1),
	} {
		if _, err := ParseWrk(out); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
}

func TestParseAB(t *testing.T) {
	a, err := ParseAB(readFixture(t, "ab.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Complete != 2000 || a.Failed != 0 || a.RPS != 7476.52 || a.P50 != time.Millisecond || a.P99 != 5*time.Millisecond {
		t.Fatalf("got %+v", a)
	}
	if a.Err() != nil {
		t.Fatal(a.Err())
	}
	failed := strings.Replace(readFixture(t, "ab.txt"), "Failed requests:        0", "Failed requests:        7", 1)
	if a, err := ParseAB(failed); err != nil || a.Failed != 7 || a.Err() == nil {
		t.Fatalf("failed requests: %+v %v, want 7 and Err", a, err)
	}
	if _, err := ParseAB("apr_socket_recv: Connection reset by peer (104)\n"); err == nil {
		t.Fatal("parsed an aborted run")
	}
}

func TestParseIperf3(t *testing.T) {
	r, err := ParseIperf3([]byte(readFixture(t, "iperf3_reverse.json")))
	if err != nil {
		t.Fatal(err)
	}
	if r.Streams != 2 || !r.Reverse || r.ReceivedBytes <= 0 || r.ReceivedBps <= 0 {
		t.Fatalf("got %+v", r)
	}
	if _, err := ParseIperf3([]byte(readFixture(t, "iperf3_refused.json"))); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Fatalf("refused run: %v, want the iperf3 error", err)
	}
	if _, err := ParseIperf3([]byte("{")); err == nil {
		t.Fatal("parsed truncated JSON")
	}
}

func FuzzParsers(f *testing.F) {
	for _, name := range []string{"wrk.txt", "wrk_non2xx.txt", "ab.txt", "iperf3_reverse.json", "iperf3_refused.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if w, err := ParseWrk(string(b)); err == nil && (w.P50 < 0 || w.RPS < 0) {
			t.Fatalf("negative figures accepted: %+v", w)
		}
		if a, err := ParseAB(string(b)); err == nil && (a.P50 < 0 || a.RPS < 0) {
			t.Fatalf("negative figures accepted: %+v", a)
		}
		if r, err := ParseIperf3(b); err == nil && r.ReceivedBytes <= 0 {
			t.Fatalf("empty iperf3 run accepted: %+v", r)
		}
	})
}
