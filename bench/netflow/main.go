// Command netflow measures what flow accounting costs an INS: TCP
// throughput of iperf3 (its server under libmpshim.so in the app namespace,
// its client in wan) through one INS, with accounting on and off
// (`isolator run --no-flows`), in alternating rounds, both directions. It
// prints the median throughput of each, and the INS process's CPU time per
// megabyte carried, which is what accounting adds to: on a busy machine
// throughput swings with other load, CPU time per byte much less.
//
//	go run ./bench/netflow [-rounds 5] [-time 5s] [-bin bin]
//
// It needs root, iproute2, iperf3 and `make build`.
package main

import (
	"github.com/mpshim/mpshim/bench/internal/report"

	"github.com/mpshim/mpshim/internal/procstat"

	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/test/topo"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds per mode (accounting on and off alternate)")
	dur := flag.Duration("time", 5*time.Second, "iperf3 time per measurement")
	bin := flag.String("bin", "bin", "directory of the built binaries")
	flag.Parse()
	if err := run(*rounds, *dur, *bin); err != nil {
		slog.Error("bench/netflow failed", "err", err)
		os.Exit(1)
	}
}

type key struct {
	flows   bool
	reverse bool
}

// sample is one measurement: throughput and the INS's CPU time per MB.
type sample struct {
	gbps, cpuPerMB float64 // Gbit/s, ms of CPU per MB (1e6 bytes)
}

func run(rounds int, dur time.Duration, binDir string) error {
	binDir, _ = filepath.Abs(binDir)
	isolator, lib := filepath.Join(binDir, "isolator"), filepath.Join(binDir, "libmpshim.so")
	for _, p := range []string{isolator, lib, "/usr/bin/iperf3"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s missing (make build; scripts/deps.sh bench): %w", p, err)
		}
	}
	ctx := context.Background()
	tp, err := topo.Build(ctx, topo.Config{Uplinks: 1})
	if err != nil {
		return err
	}
	defer tp.Close()
	results := map[key][]sample{}
	for r := range rounds {
		for _, flows := range []bool{r%2 == 0, r%2 != 0} {
			gbps, err := measure(ctx, tp, isolator, lib, flows, dur)
			if err != nil {
				return err
			}
			for rev, v := range gbps {
				results[key{flows, rev}] = append(results[key{flows, rev}], v)
				fmt.Printf("round %d  accounting %-3s  %-22s %.3f Gbit/s  INS CPU %.3f ms/MB\n", r+1, onOff(flows), dirName(rev), v.gbps, v.cpuPerMB)
			}
		}
	}
	fmt.Println()
	for _, rev := range []bool{false, true} {
		on, off := results[key{true, rev}], results[key{false, rev}]
		get := func(s []sample, f func(sample) float64) float64 {
			v := make([]float64, len(s))
			for i := range s {
				v[i] = f(s[i])
			}
			return report.Median(v)
		}
		gOn, gOff := get(on, func(s sample) float64 { return s.gbps }), get(off, func(s sample) float64 { return s.gbps })
		cOn, cOff := get(on, func(s sample) float64 { return s.cpuPerMB }), get(off, func(s sample) float64 { return s.cpuPerMB })
		fmt.Printf("%-22s throughput off %.3f, on %.3f Gbit/s (%+.1f%%); INS CPU off %.3f, on %.3f ms/MB (%+.1f%%); medians of %d\n",
			dirName(rev), gOff, gOn, 100*(gOn-gOff)/gOff, cOff, cOn, 100*(cOn-cOff)/cOff, rounds)
	}
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func dirName(reverse bool) string {
	if reverse {
		return "INS -> wan (iperf3 -R)"
	}
	return "wan -> INS"
}

// measure starts an isolator (accounting on or off) and an iperf3 server
// under the shim, and returns the throughput in each direction.
func measure(ctx context.Context, tp *topo.Topology, isolator, lib string, flows bool, dur time.Duration) (map[bool]sample, error) {
	dir, err := os.MkdirTemp("", "mpshim-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	apiSock, regSock := filepath.Join(dir, "api.sock"), filepath.Join(dir, "isolator.sock")
	u := tp.Uplinks[0]
	args := []string{"run", "--api", apiSock, "--socket", regSock, "--ins", "1", "--allow-uid", "0",
		"--uplink", fmt.Sprintf("up0=%s,pool4=%s/24,gw4=%s", u.GWIf, u.HostAddr4(0), u.WANAddr4), "--log-level", "warn"}
	if !flows {
		args = append(args, "--no-flows")
	}
	iso, err := tp.GW.Start(ctx, isolator, args...)
	if err != nil {
		return nil, err
	}
	defer iso.Stop()
	var infos []api.INSInfo
	for deadline := time.Now().Add(60 * time.Second); ; {
		out, err := exec.Command(isolator, "--api", apiSock, "ls", "-o", "json").Output()
		if err == nil && json.Unmarshal(out, &infos) == nil && len(infos) == 1 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("isolator did not come up:\n%s", iso.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	srv := tp.App.Command(ctx, "iperf3", "-s", "-p", "5201")
	srv.Env = append(os.Environ(), "LD_PRELOAD="+lib, "MPSHIM_SOCKET="+regSock)
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return nil, err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	addr := strings.Split(infos[0].Uplinks[0].Addr4, "/")[0]
	out := map[bool]sample{}
	for _, rev := range []bool{false, true} {
		cargs := []string{"-c", addr, "-p", "5201", "-t", fmt.Sprint(int(dur.Seconds())), "-J"}
		if rev {
			cargs = append(cargs, "-R")
		}
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
					Bytes         float64 `json:"bytes"`
				} `json:"sum_received"`
			} `json:"end"`
			Error string `json:"error"`
		}
		var b []byte
		var cpu0 time.Duration
		for try := 0; ; try++ {
			if cpu0, err = cpuTime(infos[0].PID); err != nil {
				return nil, err
			}
			// The server may not listen yet on the first tries.
			b, err = tp.WAN.Command(ctx, "iperf3", cargs...).Output()
			res.Error = ""
			if jerr := json.Unmarshal(b, &res); err == nil && jerr == nil && res.Error == "" && res.End.SumReceived.BitsPerSecond > 0 {
				break
			}
			if try == 40 {
				return nil, fmt.Errorf("iperf3 %v: %v %s\nserver: %s\nisolator: %s", cargs, err, res.Error, srvOut.String(), iso.Output())
			}
			time.Sleep(250 * time.Millisecond)
		}
		cpu1, err := cpuTime(infos[0].PID)
		if err != nil {
			return nil, err
		}
		out[rev] = sample{gbps: res.End.SumReceived.BitsPerSecond / 1e9, cpuPerMB: float64((cpu1 - cpu0).Milliseconds()) / (res.End.SumReceived.Bytes / 1e6)}
	}
	return out, nil
}

// cpuTime is a process's user and system CPU time (all threads).
func cpuTime(pid int) (time.Duration, error) {
	t, err := procstat.CPUTime(pid)
	if err != nil {
		return 0, fmt.Errorf("INS %w", err)
	}
	return t, nil
}
