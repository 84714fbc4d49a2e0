package parse

import (
	"testing"
	"time"
)

func TestParseRedisBenchmark(t *testing.T) {
	out := `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","106951.87","5.390","0.320","3.111","20.335","27.871","29.263"
"GET","139860.14","4.080","0.552","3.271","10.391","18.063","18.447"
`
	res, err := ParseRedisBenchmark(out, "GET", "SET")
	if err != nil {
		t.Fatal(err)
	}
	if g := res["GET"]; g.RPS != 139860.14 || g.P50 != 3271*time.Microsecond {
		t.Errorf("GET = %+v", g)
	}
	for name, bad := range map[string]string{
		"empty":     "",
		"no header": `"GET","1","2","3","4","5","6","7"` + "\n",
		"missing":   out[:len(out)-70],
		"garbage":   `"test","rps","p50_latency_ms"` + "\n" + `"GET","x","1"` + "\n",
		"negative":  `"test","rps","p50_latency_ms"` + "\n" + `"GET","-5","1"` + "\n",
	} {
		if _, err := ParseRedisBenchmark(bad, "GET", "SET"); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestParseMemaslap(t *testing.T) {
	out := "servers: 127.0.0.1:11211\nthreads count: 1\n\nRun time: 2.0s Ops: 37570 TPS: 18737 Net_rate: 20.9M/s\n"
	m, err := ParseMemaslap(out)
	if err != nil {
		t.Fatal(err)
	}
	if m.Ops != 37570 || m.TPS != 18737 || m.Duration != 2*time.Second {
		t.Errorf("got %+v", m)
	}
	for _, bad := range []string{"", "Run time: 2.0s Ops: 0 TPS: 0 Net_rate: 0M/s\n", "Run time: xs Ops: 1 TPS: 1 \n"} {
		if _, err := ParseMemaslap(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}
