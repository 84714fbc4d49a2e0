// Package parse reads the reports of the load generators the benchmarks
// drive: wrk (--latency), ApacheBench, iperf3 -J, redis-benchmark --csv and
// memaslap. Every parser rejects a
// report that lacks the figures it is asked for, and reports the errors a
// run had, so that a failed run never becomes a number.
package parse

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Wrk is what a `wrk --latency` report says.
type Wrk struct {
	// Requests is the number of completed requests, Duration the run time.
	Requests int64
	Duration time.Duration
	// RPS is wrk's Requests/sec.
	RPS float64
	// P50, P75, P90 and P99 are the latency percentiles.
	P50, P75, P90, P99 time.Duration
	// SocketErrors counts connect, read, write and timeout errors.
	SocketErrors int64
	// Non2xx counts responses outside 2xx and 3xx.
	Non2xx int64
}

var (
	wrkTotal   = regexp.MustCompile(`(?m)^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m), `)
	wrkRPS     = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)\s*$`)
	wrkPct     = regexp.MustCompile(`(?m)^\s+(50|75|90|99)%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	wrkSockErr = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$`)
	wrkNon2xx  = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses: (\d+)\s*$`)
)

// unitDuration turns wrk's "143.00" "us" into a duration.
func unitDuration(v, unit string) (time.Duration, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 1e9 {
		return 0, fmt.Errorf("bad duration %q%s", v, unit)
	}
	scale := map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9}[unit]
	return time.Duration(f * scale), nil
}

// ParseWrk parses the output of `wrk --latency`.
func ParseWrk(out string) (Wrk, error) {
	var w Wrk
	m := wrkTotal.FindStringSubmatch(out)
	if m == nil {
		return w, errors.New("wrk: no \"N requests in T\" line")
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return w, fmt.Errorf("wrk: request count %q: %w", m[1], err)
	}
	w.Requests = n
	if w.Duration, err = unitDuration(m[2], m[3]); err != nil {
		return w, fmt.Errorf("wrk: %w", err)
	}
	m = wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return w, errors.New("wrk: no Requests/sec line")
	}
	if w.RPS, err = strconv.ParseFloat(m[1], 64); err != nil {
		return w, fmt.Errorf("wrk: Requests/sec %q: %w", m[1], err)
	}
	got := 0
	for _, p := range wrkPct.FindAllStringSubmatch(out, -1) {
		d, err := unitDuration(p[2], p[3])
		if err != nil {
			return w, fmt.Errorf("wrk: %s%% latency: %w", p[1], err)
		}
		switch p[1] {
		case "50":
			w.P50 = d
		case "75":
			w.P75 = d
		case "90":
			w.P90 = d
		case "99":
			w.P99 = d
		}
		got++
	}
	if got != 4 {
		return w, fmt.Errorf("wrk: %d latency percentiles, want 50/75/90/99 (run wrk with --latency)", got)
	}
	if m := wrkSockErr.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			v, _ := strconv.ParseInt(s, 10, 64)
			w.SocketErrors += v
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		w.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return w, nil
}

// Err returns an error when the run had socket errors or non-2xx answers.
func (w Wrk) Err() error {
	if w.SocketErrors > 0 || w.Non2xx > 0 {
		return fmt.Errorf("wrk: %d socket errors, %d non-2xx/3xx responses of %d requests", w.SocketErrors, w.Non2xx, w.Requests)
	}
	if w.Requests == 0 {
		return errors.New("wrk: no request completed")
	}
	return nil
}

// AB is what an ApacheBench report says.
type AB struct {
	Complete, Failed, Non2xx, WriteErrors int64
	// RPS is ab's "Requests per second" (here: connections per second,
	// as ab without -k opens one connection per request).
	RPS float64
	// P50 and P99 are the total times of half and 99% of the requests.
	P50, P99 time.Duration
}

var (
	abInt = func(name string) *regexp.Regexp {
		return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `:\s+(\d+)`)
	}
	abComplete = abInt("Complete requests")
	abFailed   = abInt("Failed requests")
	abNon2xx   = abInt("Non-2xx responses")
	abWriteErr = abInt("Write errors")
	abRPS      = regexp.MustCompile(`(?m)^Requests per second:\s+([0-9.]+) \[#/sec\]`)
	abPct      = regexp.MustCompile(`(?m)^\s+(50|99)%\s+(\d+)\s*$`)
)

// ParseAB parses the output of ab.
func ParseAB(out string) (AB, error) {
	var a AB
	m := abComplete.FindStringSubmatch(out)
	if m == nil {
		return a, errors.New("ab: no \"Complete requests\" line")
	}
	a.Complete, _ = strconv.ParseInt(m[1], 10, 64)
	for _, f := range []struct {
		re  *regexp.Regexp
		dst *int64
	}{{abFailed, &a.Failed}, {abNon2xx, &a.Non2xx}, {abWriteErr, &a.WriteErrors}} {
		if m := f.re.FindStringSubmatch(out); m != nil {
			*f.dst, _ = strconv.ParseInt(m[1], 10, 64)
		}
	}
	m = abRPS.FindStringSubmatch(out)
	if m == nil {
		return a, errors.New("ab: no \"Requests per second\" line")
	}
	var err error
	if a.RPS, err = strconv.ParseFloat(m[1], 64); err != nil {
		return a, fmt.Errorf("ab: requests per second %q: %w", m[1], err)
	}
	for _, p := range abPct.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseInt(p[2], 10, 64)
		if err != nil || v > 1e9 {
			return a, fmt.Errorf("ab: %s%% time %q", p[1], p[2])
		}
		d := time.Duration(v) * time.Millisecond
		if p[1] == "50" {
			a.P50 = d
		} else {
			a.P99 = d
		}
	}
	return a, nil
}

// Err returns an error when the run had failures.
func (a AB) Err() error {
	if a.Failed > 0 || a.Non2xx > 0 || a.WriteErrors > 0 || a.Complete == 0 {
		return fmt.Errorf("ab: %d complete, %d failed, %d non-2xx, %d write errors", a.Complete, a.Failed, a.Non2xx, a.WriteErrors)
	}
	return nil
}

// Iperf3 is what an `iperf3 -J` client report says.
type Iperf3 struct {
	// ReceivedBps is end.sum_received.bits_per_second, SentBps
	// end.sum_sent.bits_per_second.
	ReceivedBps, SentBps float64
	// ReceivedBytes is end.sum_received.bytes.
	ReceivedBytes int64
	// Streams is the number of streams that ran.
	Streams int
	// Reverse says the server sent (-R).
	Reverse bool
}

type iperf3JSON struct {
	Start struct {
		TestStart struct {
			NumStreams int `json:"num_streams"`
			Reverse    int `json:"reverse"`
		} `json:"test_start"`
	} `json:"start"`
	End struct {
		Streams     []json.RawMessage `json:"streams"`
		SumSent     iperf3Sum         `json:"sum_sent"`
		SumReceived iperf3Sum         `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

type iperf3Sum struct {
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
}

// ParseIperf3 parses the JSON report of an iperf3 client (-J).
func ParseIperf3(out []byte) (Iperf3, error) {
	var j iperf3JSON
	if err := json.Unmarshal(out, &j); err != nil {
		return Iperf3{}, fmt.Errorf("iperf3: report: %w", err)
	}
	if j.Error != "" {
		return Iperf3{}, fmt.Errorf("iperf3: %s", j.Error)
	}
	r := Iperf3{
		ReceivedBps:   j.End.SumReceived.BitsPerSecond,
		SentBps:       j.End.SumSent.BitsPerSecond,
		ReceivedBytes: j.End.SumReceived.Bytes,
		Streams:       j.Start.TestStart.NumStreams,
		Reverse:       j.Start.TestStart.Reverse != 0,
	}
	if r.ReceivedBytes <= 0 || r.ReceivedBps <= 0 {
		return r, fmt.Errorf("iperf3: %d bytes received", r.ReceivedBytes)
	}
	if len(j.End.Streams) != r.Streams {
		return r, fmt.Errorf("iperf3: %d stream results for %d streams", len(j.End.Streams), r.Streams)
	}
	return r, nil
}
