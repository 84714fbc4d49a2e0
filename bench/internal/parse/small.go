package parse

import (
	"encoding/csv"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Redis is one test of a `redis-benchmark --csv` report.
type Redis struct {
	// Test is the command measured ("GET", "SET").
	Test string
	// RPS is requests per second.
	RPS float64
	// P50 is the median latency.
	P50 time.Duration
}

// ParseRedisBenchmark parses the output of `redis-benchmark --csv` and
// returns its tests by name; it fails if a test in want is missing.
func ParseRedisBenchmark(out string, want ...string) (map[string]Redis, error) {
	r := csv.NewReader(strings.NewReader(out))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("redis-benchmark: csv: %w", err)
	}
	res := map[string]Redis{}
	var col map[string]int
	for _, rec := range recs {
		if len(rec) > 0 && rec[0] == "test" {
			col = map[string]int{}
			for i, h := range rec {
				col[h] = i
			}
			continue
		}
		if col == nil {
			continue
		}
		ri, pi := col["rps"], col["p50_latency_ms"]
		if ri == 0 || pi == 0 || len(rec) <= max(ri, pi) {
			return nil, fmt.Errorf("redis-benchmark: row %q lacks rps or p50_latency_ms", rec)
		}
		rps, err1 := strconv.ParseFloat(rec[ri], 64)
		p50, err2 := strconv.ParseFloat(rec[pi], 64)
		if err1 != nil || err2 != nil || rps <= 0 || p50 < 0 || p50 > 1e7 {
			return nil, fmt.Errorf("redis-benchmark: bad figures in %q", rec)
		}
		res[rec[0]] = Redis{Test: rec[0], RPS: rps, P50: time.Duration(p50 * 1e6)}
	}
	if col == nil {
		return nil, errors.New("redis-benchmark: no CSV header")
	}
	for _, w := range want {
		if _, ok := res[w]; !ok {
			return nil, fmt.Errorf("redis-benchmark: no %s result", w)
		}
	}
	return res, nil
}

// Memaslap is what memaslap (Debian: memcaslap) reports at the end.
type Memaslap struct {
	// Ops is the number of operations, TPS their rate.
	Ops int64
	TPS float64
	// Duration is the run time it reports.
	Duration time.Duration
}

var memaslapTotal = regexp.MustCompile(`(?m)^Run time: ([0-9.]+)s Ops: (\d+) TPS: (\d+) `)

// ParseMemaslap parses memaslap's final "Run time: … Ops: … TPS: …" line.
func ParseMemaslap(out string) (Memaslap, error) {
	var m Memaslap
	all := memaslapTotal.FindAllStringSubmatch(out, -1)
	if all == nil {
		return m, errors.New("memaslap: no \"Run time: … TPS:\" line")
	}
	f := all[len(all)-1]
	secs, err1 := strconv.ParseFloat(f[1], 64)
	ops, err2 := strconv.ParseInt(f[2], 10, 64)
	tps, err3 := strconv.ParseFloat(f[3], 64)
	if err := errors.Join(err1, err2, err3); err != nil || secs <= 0 || secs > 1e6 {
		return m, fmt.Errorf("memaslap: bad figures in %q", f[0])
	}
	if ops == 0 {
		return m, errors.New("memaslap: no operation completed")
	}
	m.Ops, m.TPS, m.Duration = ops, tps, time.Duration(secs*1e9)
	return m, nil
}
