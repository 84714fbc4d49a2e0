package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// profileSeconds is the length of each profile; the load runs a little
// longer on both ends.
const profileSeconds = 10

// runProfile profiles the mpshim side under two loads, wrk -c64 against
// nginx and an iperf3 download, and returns a Markdown summary of the top
// entries; the raw profiles stay in the results directory.
func (e *env) runProfile(ctx context.Context) (string, error) {
	dir := filepath.Join(e.o.out, "profiles-"+time.Now().Format("2006-01-02"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	shown := dir
	dir = absPath(dir)
	t := e.targets()["mpshim"]
	var b strings.Builder
	fmt.Fprintf(&b, "Profiles of the mpshim side, %d s each (raw files in `%s`):\n\n", profileSeconds, shown)
	// Each load returns its rate per second, in units of unit, from which
	// the profile's costs are shown per unit as well.
	loads := []struct {
		name, what, unit string
		run              func() (float64, error)
		perf             bool
	}{
		{"nginx", "nginx under `wrk -t1 -c64`", "request", func() (float64, error) {
			w, err := e.wrk(ctx, t.url(), 64, (profileSeconds+4)*time.Second)
			return w.RPS, err
		}, true},
		{"bulk", "iperf3 under the shim, `iperf3 -R -P1` download", "MiB", func() (float64, error) {
			r, err := e.iperf3(ctx, t, 1, true, (profileSeconds+4)*time.Second)
			return r.ReceivedBps / 8 / (1 << 20), err
		}, false},
	}
	for _, l := range loads {
		slog.Info("profiling the mpshim side", "load", l.what, "dir", dir)
		s, err := e.profileUnder(ctx, dir, l.name, l.unit, l.run, l.perf)
		if err != nil {
			return "", fmt.Errorf("profile under %s: %w", l.what, err)
		}
		fmt.Fprintf(&b, "#### Under %s\n\n%s", l.what, s)
	}
	return b.String(), nil
}

// profileUnder runs load and meanwhile takes a CPU profile of the INS and
// of the isolator (pprof, through --pprof) and, with withPerf, a perf
// profile of the nginx workers and of the INS process (kernel included).
func (e *env) profileUnder(ctx context.Context, dir, name, unit string, load func() (float64, error), withPerf bool) (string, error) {
	var wg sync.WaitGroup
	var loadErr error
	var rate float64
	wg.Add(1)
	go func() {
		defer wg.Done()
		rate, loadErr = load()
	}()
	time.Sleep(2 * time.Second)
	insPID := e.iso.ins[0].PID
	type job struct {
		name string
		cmd  *exec.Cmd
	}
	jobs := []job{
		{name + "-ins.pprof", e.tp.GW.Command(ctx, "curl", "-sS", "--fail", "-o", filepath.Join(dir, name+"-ins.pprof"),
			fmt.Sprintf("http://%s/debug/ins/%d/profile?seconds=%d", pprofAddr, e.iso.ins[0].ID, profileSeconds))},
		{name + "-isolator.pprof", e.tp.GW.Command(ctx, "curl", "-sS", "--fail", "-o", filepath.Join(dir, name+"-isolator.pprof"),
			fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pprofAddr, profileSeconds))},
	}
	var pids []string
	for _, w := range e.shmNginx.workers() {
		pids = append(pids, strconv.Itoa(w))
	}
	perf, perfErr := exec.LookPath("perf")
	if perfErr == nil && withPerf {
		for _, p := range []struct{ name, pids string }{
			{name + "-nginx.perf.data", strings.Join(pids, ",")},
			{name + "-ins.perf.data", strconv.Itoa(insPID)},
		} {
			jobs = append(jobs, job{p.name, exec.CommandContext(ctx, perf, "record", "-q", "-e", "cpu-clock", "-F", "499", "-g",
				"-p", p.pids, "-o", filepath.Join(dir, p.name), "--", "sleep", strconv.Itoa(profileSeconds))})
		}
	}
	errs := make([]error, len(jobs))
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := j.cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("%s: %w: %s", j.name, err, tail(string(out), 500))
			}
		}()
	}
	wg.Wait()
	if loadErr != nil {
		return "", loadErr
	}
	var b strings.Builder
	units := rate * profileSeconds
	fmt.Fprintf(&b, "Load: %.0f %ss per second, so about %.0f %ss during the profile.\n\n", rate, unit, units, unit)
	for i, j := range jobs {
		if errs[i] != nil {
			fmt.Fprintf(&b, "- %s failed: %v\n", j.name, errs[i])
			continue
		}
		var out string
		var err error
		path := filepath.Join(dir, j.name)
		if strings.HasSuffix(j.name, ".pprof") {
			// Flat costs, then cumulative ones: who makes the system calls.
			out, err = top(26, "go", "tool", "pprof", "-top", "-nodecount=20", path)
			if err == nil && !strings.Contains(out, "Total samples = 0") {
				var cum string
				cum, err = top(36, "go", "tool", "pprof", "-top", "-cum", "-nodecount=30", path)
				out += "\nby cumulative cost:\n" + cumOnly(cum)
				if units > 0 {
					out += fmt.Sprintf("\nµs of CPU per %s (flat, then cumulative):\n", unit) + perUnitCosts(cum, units)
				}
			}
		} else {
			out, err = top(32, perf, "report", "--stdio", "--no-children", "--sort", "dso,sym", "--percent-limit", "1", "-g", "none", "-i", path)
		}
		if err != nil {
			fmt.Fprintf(&b, "- %s: %v\n", j.name, err)
			continue
		}
		if err := os.WriteFile(path+".txt", []byte(out), 0o644); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s:\n\n```\n%s```\n\n", j.name, out)
	}
	if perfErr != nil && withPerf {
		fmt.Fprintf(&b, "- perf: not installed (%v)\n", perfErr)
	}
	return b.String(), nil
}

// top runs a report command and keeps up to n meaningful lines.
func top(n int, name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(string(out), 500))
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "" {
			continue
		}
		keep = append(keep, l)
		if len(keep) >= n {
			break
		}
	}
	return strings.Join(keep, "\n") + "\n", nil
}

// cumOnly keeps the table of a pprof -top report, dropping the header it
// repeats.
func cumOnly(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "flat ") {
			return strings.Join(lines[i:], "\n")
		}
	}
	return s
}

// pprofLine is a row of pprof -top: flat, flat%, sum%, cum, cum%, name.
var pprofLine = regexp.MustCompile(`^\s*([0-9.]+)(ns|us|µs|ms|s|min|h)?\s+[0-9.]+%\s+[0-9.]+%\s+([0-9.]+)(ns|us|µs|ms|s|min|h)?\s+[0-9.]+%\s+(.+)$`)

// perUnitCosts restates the rows of a pprof -top report as µs of CPU per
// unit of work, given the units done during the profile.
func perUnitCosts(report string, units float64) string {
	scale := map[string]float64{"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600}
	var b strings.Builder
	for _, l := range strings.Split(report, "\n") {
		m := pprofLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		flat, _ := strconv.ParseFloat(m[1], 64)
		cum, _ := strconv.ParseFloat(m[3], 64)
		fu, cu := scale[m[2]], scale[m[4]]
		if m[2] == "" {
			fu = 0
		}
		if m[4] == "" {
			cu = 0
		}
		fmt.Fprintf(&b, "%9.2f %9.2f  %s\n", flat*fu/units*1e6, cum*cu/units*1e6, m[5])
	}
	return b.String()
}
