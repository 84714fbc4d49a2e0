// Package udpping measures the round trip of a UDP echo server: one
// datagram in flight at a time, each carrying a sequence number that the
// reply must echo, for a fixed time.
package udpping

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"
)

// Result is what a run measured.
type Result struct {
	// Sent counts datagrams sent, Lost those without a reply in time.
	Sent, Lost int
	// P50 and P99 are round-trip percentiles of the answered datagrams.
	P50, P99 time.Duration
	// Rate is answered round trips per second of the run.
	Rate float64
}

// Run sends size-byte datagrams (at least 8) to addr one at a time for d,
// waiting up to timeout for each echo.
func Run(ctx context.Context, addr string, size int, d, timeout time.Duration) (Result, error) {
	var r Result
	if size < 8 || size > 65507 {
		return r, fmt.Errorf("udpping: size %d outside 8..65507", size)
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "udp", addr)
	if err != nil {
		return r, fmt.Errorf("udpping: %w", err)
	}
	defer c.Close()
	out, in := make([]byte, size), make([]byte, 65536)
	var rtts []time.Duration
	start := time.Now()
	end := start.Add(d)
	for seq := uint64(1); time.Now().Before(end) && ctx.Err() == nil; seq++ {
		binary.BigEndian.PutUint64(out, seq)
		t0 := time.Now()
		if _, err := c.Write(out); err != nil {
			return r, fmt.Errorf("udpping: send: %w", err)
		}
		r.Sent++
		if err := c.SetReadDeadline(t0.Add(timeout)); err != nil {
			return r, err
		}
		for {
			n, err := c.Read(in)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					r.Lost++
					break
				}
				return r, fmt.Errorf("udpping: receive: %w", err)
			}
			// A late echo of an earlier datagram is not this one's.
			if n == size && binary.BigEndian.Uint64(in) == seq {
				rtts = append(rtts, time.Since(t0))
				break
			}
		}
	}
	if len(rtts) == 0 {
		return r, fmt.Errorf("udpping: no echo from %s in %d tries", addr, r.Sent)
	}
	slices.Sort(rtts)
	r.P50 = rtts[len(rtts)/2]
	r.P99 = rtts[min(len(rtts)-1, len(rtts)*99/100)]
	r.Rate = float64(len(rtts)) / time.Since(start).Seconds()
	return r, nil
}
