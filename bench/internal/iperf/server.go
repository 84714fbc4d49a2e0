// Package iperf is a server for the TCP tests of the iperf3 client
// (iperf3 -c, forward or reverse, any number of parallel streams), written
// against a net.Listener so that it serves through any stack: the kernel's
// or an INS's through mpnet, which a C iperf3 cannot use. The benchmarks
// then measure every side with the same iperf3 client.
//
// The protocol: the client opens a control connection and sends a 37-byte
// cookie; the server answers with one-byte states (PARAM_EXCHANGE, then the
// client sends its parameters as a length-prefixed JSON object;
// CREATE_STREAMS, then the client opens the data connections, each starting
// with the same cookie; TEST_START and TEST_RUNNING). The test runs until the
// client sends TEST_END; then both sides exchange JSON results
// (EXCHANGE_RESULTS, client first) and the server ends with DISPLAY_RESULTS.
package iperf

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Protocol states, one signed byte each on the control connection.
const (
	stateTestStart       = 1
	stateTestRunning     = 2
	stateTestEnd         = 4
	stateParamExchange   = 9
	stateCreateStreams   = 10
	stateClientTerminate = 12
	stateExchangeResults = 13
	stateDisplayResults  = 14
	stateIperfDone       = 16
	stateAccessDenied    = 0xff // -1
)

const (
	// cookieSize is the length of the session cookie, NUL included.
	cookieSize = 37
	// maxJSON bounds a JSON message from a client.
	maxJSON = 1 << 20
	// maxStreams bounds the parallel streams a client may ask for.
	maxStreams = 128
	// maxBlock bounds the block size a client may ask for.
	maxBlock = 16 << 20
	// setupTimeout bounds each step before the test runs.
	setupTimeout = 10 * time.Second
)

// Params are the client's test parameters this server uses.
type Params struct {
	TCP           bool `json:"tcp"`
	UDP           bool `json:"udp"`
	Time          int  `json:"time"`
	Omit          int  `json:"omit"`
	Parallel      int  `json:"parallel"`
	Reverse       bool `json:"reverse"`
	Bidirectional bool `json:"bidirectional"`
	Len           int  `json:"len"`
	Bytes         int  `json:"num"`
	Blocks        int  `json:"blockcount"`
}

// Validate rejects tests this server does not run.
func (p *Params) Validate() error {
	switch {
	case p.UDP:
		return errors.New("UDP tests are not supported")
	case p.Bidirectional:
		return errors.New("bidirectional tests are not supported")
	case p.Bytes != 0 || p.Blocks != 0:
		return errors.New("tests bounded by bytes or blocks are not supported (use -t)")
	case p.Parallel < 0 || p.Parallel > maxStreams:
		return fmt.Errorf("%d parallel streams, want 1..%d", p.Parallel, maxStreams)
	case p.Len < 0 || p.Len > maxBlock:
		return fmt.Errorf("block size %d outside 1..%d", p.Len, maxBlock)
	case p.Time < 0 || p.Time > 3600 || p.Omit < 0 || p.Omit > 3600:
		return fmt.Errorf("duration %d s (omit %d s) outside 0..3600", p.Time, p.Omit)
	}
	if p.Parallel == 0 {
		p.Parallel = 1
	}
	if p.Len == 0 {
		p.Len = 128 << 10
	}
	return nil
}

// ParseParams decodes and validates the client's parameter object.
func ParseParams(b []byte) (Params, error) {
	var p Params
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("iperf: parameters: %w", err)
	}
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("iperf: %w", err)
	}
	return p, nil
}

// streamResult is one stream in the server's results.
type streamResult struct {
	ID          int     `json:"id"`
	Bytes       int64   `json:"bytes"`
	Retransmits int     `json:"retransmits"`
	Jitter      float64 `json:"jitter"`
	Errors      int     `json:"errors"`
	Packets     int     `json:"packets"`
	StartTime   float64 `json:"start_time"`
	EndTime     float64 `json:"end_time"`
}

// results is the server's JSON results object.
type results struct {
	CPUTotal      float64        `json:"cpu_util_total"`
	CPUUser       float64        `json:"cpu_util_user"`
	CPUSystem     float64        `json:"cpu_util_system"`
	SenderRetrans int            `json:"sender_has_retransmits"`
	Streams       []streamResult `json:"streams"`
}

// streamID is the id iperf3 gives the n-th stream (0-based) of a test:
// 1 for the first, then 3, 4, 5, … (iperf3 never uses 2).
func streamID(n int) int {
	if n == 0 {
		return 1
	}
	return n + 2
}

// Serve runs tests, one at a time, for clients connecting to ln until ctx
// ends or ln fails. A client that breaks the protocol ends its own test
// only.
func Serve(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	conns := make(chan net.Conn)
	errc := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			select {
			case conns <- c:
			case <-ctx.Done():
				c.Close()
			}
		}
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("iperf: accept: %w", err)
		case c := <-conns:
			if err := runTest(ctx, c, conns); err != nil {
				log.Warn("iperf test failed", "client", c.RemoteAddr(), "err", err)
			}
			c.Close()
		}
	}
}

func readFull(c net.Conn, n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	return b, err
}

func writeState(c net.Conn, s byte) error {
	_, err := c.Write([]byte{s})
	return err
}

func readJSON(c net.Conn) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > maxJSON {
		return nil, fmt.Errorf("JSON message of %d bytes", size)
	}
	return readFull(c, int(size))
}

func writeJSON(c net.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	_, err = c.Write(append(msg, b...))
	return err
}

// deny turns away a connection that is not part of the running test.
func deny(c net.Conn) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_ = writeState(c, stateAccessDenied)
	c.Close()
}

func cpuTimes() (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

func runTest(ctx context.Context, ctrl net.Conn, conns <-chan net.Conn) error {
	_ = ctrl.SetDeadline(time.Now().Add(setupTimeout))
	cookie, err := readFull(ctrl, cookieSize)
	if err != nil {
		return fmt.Errorf("cookie: %w", err)
	}
	if err := writeState(ctrl, stateParamExchange); err != nil {
		return err
	}
	pb, err := readJSON(ctrl)
	if err != nil {
		return fmt.Errorf("parameters: %w", err)
	}
	p, err := ParseParams(pb)
	if err != nil {
		_ = writeState(ctrl, stateAccessDenied)
		return err
	}
	if err := writeState(ctrl, stateCreateStreams); err != nil {
		return err
	}
	streams, err := acceptStreams(ctx, cookie, p.Parallel, conns)
	defer func() {
		for _, s := range streams {
			s.Close()
		}
	}()
	if err != nil {
		return err
	}
	// Latecomers while the test runs are turned away.
	runCtx, endRun := context.WithCancel(ctx)
	defer endRun()
	go func() {
		for {
			select {
			case <-runCtx.Done():
				return
			case c := <-conns:
				deny(c)
			}
		}
	}()

	u0, s0 := cpuTimes()
	start := time.Now()
	if err := writeState(ctrl, stateTestStart); err != nil {
		return err
	}
	if err := writeState(ctrl, stateTestRunning); err != nil {
		return err
	}
	counts := make([]atomic.Int64, len(streams))
	var wg sync.WaitGroup
	block := make([]byte, p.Len)
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.Reverse {
				for {
					n, err := s.Write(block)
					counts[i].Add(int64(n))
					if err != nil {
						return
					}
				}
			}
			buf := make([]byte, p.Len)
			for {
				n, err := s.Read(buf)
				counts[i].Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	// The client ends the test; a client that never does is cut off a
	// few seconds after the test's own length, like iperf3 does.
	_ = ctrl.SetDeadline(time.Now().Add(time.Duration(p.Time+p.Omit+10) * time.Second))
	state, err := readFull(ctrl, 1)
	for _, s := range streams {
		s.Close()
	}
	wg.Wait()
	end := time.Since(start)
	if err != nil {
		return fmt.Errorf("waiting for the end of the test: %w", err)
	}
	switch state[0] {
	case stateTestEnd:
	case stateClientTerminate:
		return errors.New("client terminated the test")
	default:
		return fmt.Errorf("unexpected state %d from client", int8(state[0]))
	}
	u1, s1 := cpuTimes()
	_ = ctrl.SetDeadline(time.Now().Add(setupTimeout))
	if err := writeState(ctrl, stateExchangeResults); err != nil {
		return err
	}
	if _, err := readJSON(ctrl); err != nil {
		return fmt.Errorf("client results: %w", err)
	}
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / end.Seconds() }
	res := results{CPUUser: pct(u1 - u0), CPUSystem: pct(s1 - s0), CPUTotal: pct(u1 - u0 + s1 - s0)}
	for i := range streams {
		res.Streams = append(res.Streams, streamResult{ID: streamID(i), Bytes: counts[i].Load(), EndTime: end.Seconds()})
	}
	if err := writeJSON(ctrl, res); err != nil {
		return fmt.Errorf("server results: %w", err)
	}
	if err := writeState(ctrl, stateDisplayResults); err != nil {
		return err
	}
	// IPERF_DONE, or the client just closes.
	if b, err := readFull(ctrl, 1); err == nil && b[0] != stateIperfDone {
		return fmt.Errorf("unexpected final state %d", int8(b[0]))
	}
	return nil
}

// acceptStreams takes n data connections carrying cookie.
func acceptStreams(ctx context.Context, cookie []byte, n int, conns <-chan net.Conn) ([]net.Conn, error) {
	var streams []net.Conn
	deadline := time.NewTimer(setupTimeout)
	defer deadline.Stop()
	for len(streams) < n {
		select {
		case <-ctx.Done():
			return streams, ctx.Err()
		case <-deadline.C:
			return streams, fmt.Errorf("%d of %d streams connected in %v", len(streams), n, setupTimeout)
		case c := <-conns:
			_ = c.SetDeadline(time.Now().Add(setupTimeout))
			got, err := readFull(c, cookieSize)
			if err != nil || string(got) != string(cookie) {
				deny(c)
				continue
			}
			_ = c.SetDeadline(time.Time{})
			streams = append(streams, c)
		}
	}
	return streams, nil
}
