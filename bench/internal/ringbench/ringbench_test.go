package ringbench

import (
	"testing"
	"time"
)

func TestParseLine(t *testing.T) {
	r, err := ParseLine("result ring 8 1600000 2000000000 5000 90000")
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Mode: "ring", Threads: 8, Count: 1600000, Elapsed: 2 * time.Second, P50: 5 * time.Microsecond, P99: 90 * time.Microsecond}
	if r != want || r.Rate() != 800000 {
		t.Fatalf("got %+v rate %v, want %+v", r, r.Rate(), want)
	}
	for _, bad := range []string{"", "result ring 8 1 2 3", "result pipe 1 1 1 1 1", "result ring 9 1 1 1 1", "result ring 1 0 1 1 1", "result ring 1 1 1 -1 1", "result ring 1 1 1 x 1"} {
		if _, err := ParseLine(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseLine(f *testing.F) {
	f.Add("result ring 8 1600000 2000000000 5000 90000")
	f.Add("result seqpacket 1 20000 1000000 40000 80000")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseLine(s)
		if err == nil && (r.Count < 1 || r.Elapsed <= 0 || r.P50 < 0) {
			t.Fatalf("accepted %+v", r)
		}
	})
}
