package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mpshim/mpshim/bench/internal/hold"
	"github.com/mpshim/mpshim/bench/internal/iperf"
	"github.com/mpshim/mpshim/mpnet"
)

// readyLine is what the helpers print once they serve.
const readyLine = "mpbench: ready"

// netstackMain serves files over HTTP and iperf3 tests through mpnet (the
// isolator at $MPSHIM_SOCKET) until SIGTERM.
func netstackMain(args []string) error {
	fs := flag.NewFlagSet("netstack", flag.ContinueOnError)
	httpAddr := fs.String("http", ":8080", "HTTP listen address")
	iperfAddr := fs.String("iperf", ":5202", "iperf3 listen address (empty: none)")
	root := fs.String("root", "", "directory served over HTTP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *root == "" {
		return errors.New("netstack: --root is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	c, err := mpnet.Default(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	hln, err := c.Listen(ctx, "tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("netstack: listen %s: %w", *httpAddr, err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(*root)), ErrorLog: nil}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(hln) }()
	if *iperfAddr != "" {
		iln, err := c.Listen(ctx, "tcp", *iperfAddr)
		if err != nil {
			return fmt.Errorf("netstack: listen %s: %w", *iperfAddr, err)
		}
		go func() { errc <- iperf.Serve(ctx, iln, slog.Default()) }()
	}
	fmt.Println(readyLine)
	select {
	case <-ctx.Done():
		srv.Close()
		return nil
	case err := <-errc:
		return fmt.Errorf("netstack: %w", err)
	}
}

// holdMain opens idle connections, prints a hold.Result as JSON, and keeps
// them open until SIGTERM.
func holdMain(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	n := fs.Int("n", 1000, "connections")
	src := fs.String("src", "", "comma-separated source addresses")
	dst := fs.String("dst", "", "comma-separated targets HOST:PORT")
	conc := fs.Int("c", 256, "connects in flight")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := hold.Config{N: *n, Concurrency: *conc}
	for _, s := range splitList(*src) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("hold: source %q: %w", s, err)
		}
		cfg.Sources = append(cfg.Sources, a)
	}
	for _, s := range splitList(*dst) {
		a, err := netip.ParseAddrPort(s)
		if err != nil {
			return fmt.Errorf("hold: target %q: %w", s, err)
		}
		cfg.Targets = append(cfg.Targets, a)
	}
	if err := hold.RaiseNoFile(uint64(*n) + 1024); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	set, res, err := hold.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer set.Close()
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	<-ctx.Done()
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// waitOutput waits until out() contains a line starting with prefix and
// returns that line; it gives up when done is closed or after timeout.
func waitOutput(out func() string, done <-chan struct{}, prefix string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range strings.Split(out(), "\n") {
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		}
		select {
		case <-done:
			return "", fmt.Errorf("exited before printing %q: %s", prefix, tail(out(), 2000))
		default:
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no %q within %v: %s", prefix, timeout, tail(out(), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// absPath resolves p against the working directory.
func absPath(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}
