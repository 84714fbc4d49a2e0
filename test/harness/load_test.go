package harness

import (
	"testing"
	"time"
)

// Real wrk 4.1 summaries: a clean run, and one with errors and non-2xx.
func TestParseWrk(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      WrkResult
	}{
		{"clean", `Running 11m test @ http://10.77.0.10/1k.bin
  2 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    41.90ms   37.95ms 489.24ms   90.78%
    Req/Sec     3.44k     1.42k    7.78k    67.83%
  100021 requests in 14.80s, 121.06MB read
Requests/sec:   6760.32
Transfer/sec:      8.18MB
`, WrkResult{Requests: 100021, Elapsed: 14800 * time.Millisecond}},
		{"errors", `Running 10m test @ http://10.77.0.10/1k.bin
  2 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    95.43ms  101.83ms 795.81ms   87.15%
    Req/Sec     1.35k   712.94     3.64k    67.03%
  50005 requests in 1.06m, 60.52MB read
  Socket errors: connect 1, read 10803, write 2, timeout 3
  Non-2xx or 3xx responses: 17
Requests/sec:   2623.82
Transfer/sec:      3.18MB
`, WrkResult{Requests: 50005, Elapsed: time.Duration(1.06 * float64(time.Minute)), Connect: 1, Read: 10803, Write: 2, Timeout: 3, Non2xx: 17}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseWrk(tc.out)
			if err != nil {
				t.Fatal(err)
			}
			got.Output = ""
			if got != tc.want {
				t.Fatalf("ParseWrk = %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := ParseWrk("unable to connect to 10.77.0.10:80 Connection refused\n"); err == nil {
		t.Fatal("ParseWrk accepted output without a request count")
	}
}

func FuzzParseWrk(f *testing.F) {
	f.Add("  100021 requests in 14.80s, 121.06MB read\n  Socket errors: connect 0, read 1, write 0, timeout 0\n")
	f.Add("  7 requests in 3.00m, 1MB read\n  Non-2xx or 3xx responses: 7\n")
	f.Fuzz(func(t *testing.T, out string) {
		r, err := ParseWrk(out)
		if err == nil && (r.Requests < 0 || r.Elapsed < 0) {
			t.Fatalf("ParseWrk(%q) = %+v", out, r)
		}
	})
}
