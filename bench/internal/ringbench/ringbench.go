// Package ringbench measures control-call round trips over the shared
// memory request ring against an AF_UNIX SOCK_SEQPACKET request/response
// baseline.
//
// It compiles bench/ring/client.c with ring/mpring.c, starts the client with
// a ring memfd and one socketpair end per client thread, and serves both
// from this Go process: the ring with one consumer goroutine, each socket
// with its own goroutine. The client measures 1 and 8 threads, ring first,
// then the baseline.
package ringbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/ring"
)

// MaxThreads is the largest number of client threads.
const MaxThreads = 8

// Threads are the client thread counts measured.
var Threads = []int{1, 8}

// Result is one measured transport and thread count.
type Result struct {
	// Mode is "ring" or "seqpacket".
	Mode     string
	Threads  int
	Count    int
	Elapsed  time.Duration
	P50, P99 time.Duration
}

// Rate is round trips per second.
func (r Result) Rate() float64 { return float64(r.Count) / r.Elapsed.Seconds() }

// Report is a whole run.
type Report struct {
	// Results by Key(mode, threads).
	Results map[string]Result
	// ConsumerWakes and CallerWakes are futex wake-ups per request.
	ConsumerWakes, CallerWakes float64
}

// Key indexes Report.Results.
func Key(mode string, threads int) string { return mode + strconv.Itoa(threads) }

// SourceDir finds bench/ring, which holds client.c: from this file's
// location when built from the tree, else relative to the working
// directory (the module root).
func SourceDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		d := filepath.Join(filepath.Dir(file), "..", "..", "ring")
		if _, err := os.Stat(filepath.Join(d, "client.c")); err == nil {
			return d, nil
		}
	}
	if _, err := os.Stat("bench/ring/client.c"); err == nil {
		return filepath.Abs("bench/ring")
	}
	return "", errors.New("cannot find bench/ring/client.c; run from the module root")
}

func buildClient(dir, out string) error {
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	ringDir := filepath.Join(dir, "..", "..", "ring")
	cmd := exec.Command(cc, "-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-I", ringDir,
		"-o", out, filepath.Join(dir, "client.c"), filepath.Join(ringDir, "mpring.c"))
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ringbench: compiling client: %w\n%s", err, b)
	}
	return nil
}

// Run measures n round trips of size-byte requests per client thread and
// transport.
func Run(n, size int) (Report, error) {
	rep := Report{Results: map[string]Result{}}
	dir, err := SourceDir()
	if err != nil {
		return rep, err
	}
	tmp, err := os.MkdirTemp("", "bench-ring")
	if err != nil {
		return rep, fmt.Errorf("ringbench: temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	client := filepath.Join(tmp, "client")
	if err := buildClient(dir, client); err != nil {
		return rep, err
	}

	r, memfd, err := ring.Create(ring.Config{})
	if err != nil {
		return rep, err
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		err := r.Serve(ctx, func(req ring.Request) {
			if err := r.Reply(req.Slot, req.Data); err != nil {
				slog.Error("ringbench: reply", "err", err)
			}
		})
		if err != nil && ctx.Err() == nil && !errors.Is(err, ring.ErrClosed) {
			slog.Error("ringbench: ring serve", "err", err)
		}
	}()

	files := []*os.File{memfd}
	for range MaxThreads {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return rep, fmt.Errorf("ringbench: socketpair: %w", err)
		}
		files = append(files, os.NewFile(uintptr(fds[1]), "client-sock"))
		srv := os.NewFile(uintptr(fds[0]), "server-sock")
		conn, err := net.FileConn(srv)
		srv.Close()
		if err != nil {
			return rep, fmt.Errorf("ringbench: server conn: %w", err)
		}
		defer conn.Close()
		go echo(conn)
	}

	args := []string{strconv.Itoa(n), strconv.Itoa(size)}
	for _, t := range Threads {
		args = append(args, strconv.Itoa(t))
	}
	cmd := exec.Command(client, args...)
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return rep, fmt.Errorf("ringbench: client pipe: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return rep, fmt.Errorf("ringbench: starting client: %w", err)
	}
	for _, f := range files {
		f.Close()
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		res, err := ParseLine(sc.Text())
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return rep, err
		}
		rep.Results[Key(res.Mode, res.Threads)] = res
	}
	if err := cmd.Wait(); err != nil {
		return rep, fmt.Errorf("ringbench: client: %w", err)
	}
	st := r.Stats()
	if st.Requests > 0 {
		rep.ConsumerWakes = float64(st.ConsWakes) / float64(st.Requests)
		rep.CallerWakes = float64(st.ReplyWakes) / float64(st.Requests)
	}
	for _, t := range Threads {
		for _, m := range []string{"ring", "seqpacket"} {
			if _, ok := rep.Results[Key(m, t)]; !ok {
				return rep, fmt.Errorf("ringbench: client printed no %s result for %d threads", m, t)
			}
		}
	}
	return rep, nil
}

func echo(c net.Conn) {
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

// ParseLine parses one client line:
// "result MODE THREADS COUNT ELAPSED_NS P50_NS P99_NS".
func ParseLine(line string) (Result, error) {
	f := strings.Fields(line)
	if len(f) != 7 || f[0] != "result" || (f[1] != "ring" && f[1] != "seqpacket") {
		return Result{}, fmt.Errorf("ringbench: unexpected client output %q", line)
	}
	var v [5]int64
	for i := range v {
		x, err := strconv.ParseInt(f[2+i], 10, 64)
		if err != nil || x < 0 {
			return Result{}, fmt.Errorf("ringbench: client output %q: bad field %q", line, f[2+i])
		}
		v[i] = x
	}
	if v[0] < 1 || v[0] > MaxThreads || v[1] < 1 || v[2] < 1 {
		return Result{}, fmt.Errorf("ringbench: client output %q: out of range", line)
	}
	return Result{Mode: f[1], Threads: int(v[0]), Count: int(v[1]),
		Elapsed: time.Duration(v[2]), P50: time.Duration(v[3]), P99: time.Duration(v[4])}, nil
}
