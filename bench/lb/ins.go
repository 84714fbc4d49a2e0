package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mpshim/mpshim/bench/internal/parse"
	"github.com/mpshim/mpshim/bench/internal/report"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/test/topo"
)

// runINS measures the balancer as the daemon runs it: an isolator with
// four INS holding the VIP (--vip), Debian's nginx (two workers) under
// libmpshim.so behind it, wrk in the wan namespace over a plain veth pair.
// The pool is set to 1, 2 and 4 INS by draining the others.
//
//	ins-rps-N      wrk -t2 -c64 through the VIP with N INS up (req/s)
//	ins-cpu-N      machine CPU time per request in those runs (µs)
//	ins-p50-vip    wrk -t1 -c1 --latency to the VIP, one INS up (µs; pairs
//	               of runs as p50-vip in the first part)
//	ins-p50-direct the same to that INS's own address (µs)
//	ins-vip-added  the median over the pairs of the difference (µs)
func runINS(bin string, rounds int, dur time.Duration) error {
	for _, p := range []string{filepath.Join(bin, "isolator"), filepath.Join(bin, "libmpshim.so")} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s missing (make build): %w", p, err)
		}
	}
	if _, err := user.Lookup(config.DefaultINSUser); err != nil {
		return fmt.Errorf("user %s missing (scripts/deps.sh test creates it): %w", config.DefaultINSUser, err)
	}
	ctx := context.Background()
	tp, err := topo.Build(ctx, topo.Config{Uplinks: 1, NoIPv6: true, Direct: true})
	if err != nil {
		return err
	}
	defer tp.Close()
	dir, err := os.MkdirTemp("", "mpshim-lb-ins-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), make([]byte, 1024), 0o644); err != nil {
		return err
	}
	up := tp.Uplinks[0]
	vip := "10.77.0.5"
	api, sock := filepath.Join(dir, "api.sock"), filepath.Join(dir, "isolator.sock")
	iso := tp.GW.Command(ctx, filepath.Join(bin, "isolator"), "run", "--api", api, "--socket", sock,
		"--state-dir", filepath.Join(dir, "state"), "--ins", "4", "--allow-uid", "0", "--allow-uid", "33",
		"--uplink", fmt.Sprintf("up0=%s,pool4=%s/24,gw4=%s", up.GWIf, up.HostAddr4(0), up.WANAddr4),
		"--vip", "up0="+vip, "--log-level", "warn")
	logf, err := os.Create(filepath.Join(dir, "isolator.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	iso.Stdout, iso.Stderr = logf, logf
	iso.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := iso.Start(); err != nil {
		return fmt.Errorf("start isolator: %w", err)
	}
	defer func() {
		_ = iso.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { iso.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-iso.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}()
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(bin, "isolator"), append([]string{"--api", api}, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("isolator %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := cli("ls"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("isolator did not answer within 90 s:\n%s", b)
		}
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`daemon on;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    server { listen 80 backlog=4096; root %[1]s; }
}
`, dir)), 0o644); err != nil {
		return err
	}
	ng := tp.App.Command(ctx, "/usr/sbin/nginx", "-c", conf)
	ng.Env = append(os.Environ(), "LD_PRELOAD="+filepath.Join(bin, "libmpshim.so"), "MPSHIM_SOCKET="+sock)
	if out, err := ng.CombinedOutput(); err != nil {
		return fmt.Errorf("nginx under the shim: %w: %s", err, out)
	}
	defer func() {
		stop := tp.App.Command(context.Background(), "/usr/sbin/nginx", "-c", conf, "-s", "stop")
		stop.Env = ng.Env
		_ = stop.Run()
	}()

	m := map[string]*report.Metric{}
	add := func(name string, v float64) {
		if m[name] == nil {
			m[name] = &report.Metric{}
		}
		m[name].Add("lb", v)
	}
	wrk := func(args ...string) (parse.Wrk, error) {
		out, err := tp.WAN.Run(ctx, "wrk", append([]string{"-d", fmt.Sprint(int(dur.Seconds())) + "s", "--latency"}, args...)...)
		if err != nil {
			return parse.Wrk{}, err
		}
		w, err := parse.ParseWrk(out)
		if err != nil {
			return w, err
		}
		return w, w.Err()
	}
	pool := func(n int) error {
		for id := 1; id <= 4; id++ {
			op := "drain"
			if id <= n {
				op = "undrain"
			}
			if _, err := cli("lb", op, strconv.Itoa(id)); err != nil {
				return err
			}
		}
		return nil
	}
	slog.Info("bench/lb: INS behind the VIP", "load", report.LoadAvg())
	for r := range rounds {
		for _, n := range []int{1, 2, 4} {
			if err := pool(n); err != nil {
				return err
			}
			cpu0, err := busyTime()
			if err != nil {
				return err
			}
			w, err := wrk("-t2", "-c64", "http://"+vip+"/f")
			if err != nil {
				return fmt.Errorf("round %d, %d INS: %w", r, n, err)
			}
			cpu1, err := busyTime()
			if err != nil {
				return err
			}
			add(fmt.Sprintf("ins-rps-%d", n), w.RPS)
			add(fmt.Sprintf("ins-cpu-%d", n), float64((cpu1-cpu0).Microseconds())/float64(w.Requests))
		}
		slog.Info("bench/lb: INS round done", "round", r+1)
	}
	if err := pool(1); err != nil {
		return err
	}
	if err := latency(ctx, tp.WAN, "http://"+vip+"/f", "http://"+up.HostAddr4(0).String()+"/f", "ins-", add); err != nil {
		return err
	}
	if out, err := cli("lb", "status"); err == nil {
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			slog.Info("bench/lb: " + sc.Text())
		}
	}
	fmt.Printf("\nWith the isolator: nginx under the shim behind the VIP, 1, 2 or 4 INS up\n\n")
	fmt.Printf("| figure | median | spread |\n|---|---|---|\n")
	for _, name := range []string{"ins-rps-1", "ins-rps-2", "ins-rps-4", "ins-cpu-1", "ins-cpu-2", "ins-cpu-4", "ins-p50-vip", "ins-p50-direct", "ins-vip-added"} {
		med, _ := m[name].Median("lb")
		spread, _ := m[name].Spread("lb")
		fmt.Printf("| %s | %s | %s |\n", name, report.FormatValue(med), report.FormatValue(spread))
	}
	added, _ := m["ins-vip-added"].Median("lb")
	fmt.Printf("\nlatency the VIP adds in front of an INS at wrk -c1 (median over %d pairs of the p50 difference): %.1f µs; load %s\n", *latPairs, added, report.LoadAvg())
	return nil
}
