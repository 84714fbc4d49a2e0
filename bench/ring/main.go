// Command ring benchmarks the shared-memory request ring against an
// AF_UNIX SOCK_SEQPACKET request/response baseline.
//
// It compiles client.c with ring/mpring.c, starts the client with a ring
// memfd and one socketpair end per client thread, and serves both from
// this Go process: the ring with one consumer goroutine, each socket with
// its own goroutine. It prints p50/p99 round-trip latency and requests/s
// for 1 and 8 client threads, and the ring/baseline ratios.
//
//	go run ./bench/ring [-quick] [-n requests-per-thread] [-size 64]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
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

	"github.com/mpshim/mpshim/ring"
	"golang.org/x/sys/unix"
)

const maxThreads = 8

type result struct {
	mode     string
	threads  int
	count    int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (r result) rate() float64 { return float64(r.count) / r.elapsed.Seconds() }

func main() {
	quick := flag.Bool("quick", false, "short run")
	n := flag.Int("n", 200_000, "requests per client thread and mode")
	size := flag.Int("size", 64, "request size in bytes (8..256)")
	flag.Parse()
	if *quick {
		*n = 20_000
	}
	if err := run(*n, *size); err != nil {
		slog.Error("bench/ring failed", "err", err)
		os.Exit(1)
	}
}

// sourceDir returns the directory of this file, to find client.c and the
// ring sources.
func sourceDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		if _, err := os.Stat(filepath.Join(filepath.Dir(file), "client.c")); err == nil {
			return filepath.Dir(file), nil
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
		return fmt.Errorf("compiling client: %w\n%s", err, b)
	}
	return nil
}

func run(n, size int) error {
	dir, err := sourceDir()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "bench-ring")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	client := filepath.Join(tmp, "client")
	if err := buildClient(dir, client); err != nil {
		return err
	}

	r, memfd, err := ring.Create(ring.Config{})
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		err := r.Serve(ctx, func(req ring.Request) {
			if err := r.Reply(req.Slot, req.Data); err != nil {
				slog.Error("reply", "err", err)
			}
		})
		if err != nil && ctx.Err() == nil && !errors.Is(err, ring.ErrClosed) {
			slog.Error("ring serve", "err", err)
		}
	}()

	files := []*os.File{memfd}
	for i := 0; i < maxThreads; i++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socketpair: %w", err)
		}
		files = append(files, os.NewFile(uintptr(fds[1]), "client-sock"))
		srv := os.NewFile(uintptr(fds[0]), "server-sock")
		conn, err := net.FileConn(srv)
		srv.Close()
		if err != nil {
			return fmt.Errorf("server conn: %w", err)
		}
		defer conn.Close()
		go echo(conn)
	}

	cmd := exec.Command(client, strconv.Itoa(n), strconv.Itoa(size), "1", "8")
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("client pipe: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting client: %w", err)
	}
	for _, f := range files {
		f.Close()
	}
	fmt.Printf("%d-byte request/response round trips, %d per thread, GOMAXPROCS=%d, %d CPUs\n",
		size, n, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Printf("%-10s %7s %12s %10s %10s\n", "transport", "threads", "req/s", "p50", "p99")
	results := map[string]result{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		res, err := parse(sc.Text())
		if err != nil {
			return err
		}
		results[res.mode+strconv.Itoa(res.threads)] = res
		fmt.Printf("%-10s %7d %12.0f %10v %10v\n", res.mode, res.threads, res.rate(), res.p50, res.p99)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	st := r.Stats()
	fmt.Printf("ring futex wakes per request: consumer %.4f, callers %.4f (%d requests)\n",
		float64(st.ConsWakes)/float64(st.Requests), float64(st.ReplyWakes)/float64(st.Requests), st.Requests)
	for _, t := range []int{1, 8} {
		rg, ok1 := results["ring"+strconv.Itoa(t)]
		sp, ok2 := results["seqpacket"+strconv.Itoa(t)]
		if !ok1 || !ok2 {
			return fmt.Errorf("client printed no result for %d threads", t)
		}
		fmt.Printf("%d thread(s): ring/seqpacket rate %.2fx, p50 %.2fx lower, p99 %.2fx lower\n",
			t, rg.rate()/sp.rate(), float64(sp.p50)/float64(rg.p50), float64(sp.p99)/float64(rg.p99))
	}
	return nil
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

func parse(line string) (result, error) {
	f := strings.Fields(line)
	if len(f) != 7 || f[0] != "result" {
		return result{}, fmt.Errorf("unexpected client output %q", line)
	}
	var v [5]int64
	for i := range v {
		x, err := strconv.ParseInt(f[2+i], 10, 64)
		if err != nil {
			return result{}, fmt.Errorf("client output %q: %w", line, err)
		}
		v[i] = x
	}
	return result{mode: f[1], threads: int(v[0]), count: int(v[1]),
		elapsed: time.Duration(v[2]), p50: time.Duration(v[3]), p99: time.Duration(v[4])}, nil
}
