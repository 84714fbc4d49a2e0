package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/mpshim/mpshim/bench/internal/report"
	"github.com/mpshim/mpshim/bench/internal/ringbench"
)

// Markers of the section of BENCHMARKS.md a full run rewrites.
const (
	docBegin = "<!-- mpbench:latest:begin -->"
	docEnd   = "<!-- mpbench:latest:end -->"
)

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "?"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// describeMachine says what the figures were measured on.
func describeMachine() string {
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if m := regexp.MustCompile(`(?m)^model name\s*:\s*(.+)$`).FindSubmatch(b); m != nil {
			cpu = string(m[1])
		}
	}
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if m := regexp.MustCompile(`MemTotal:\s+(\d+) kB`).FindSubmatch(b); m != nil {
			var kb int
			fmt.Sscan(string(m[1]), &kb)
			mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	osName := "?"
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		if m := regexp.MustCompile(`(?m)^PRETTY_NAME="?([^"\n]+)"?`).FindSubmatch(b); m != nil {
			osName = string(m[1])
		}
	}
	nginx := strings.TrimPrefix(firstLine("/usr/sbin/nginx", "-v"), "nginx version: ")
	wrk, _, _ := strings.Cut(firstLine("wrk", "-v"), " Copyright")
	ab := "ab ?"
	if m := regexp.MustCompile(`Version (\S+)`).FindStringSubmatch(firstLine("ab", "-V")); m != nil {
		ab = "ab " + m[1]
	}
	return fmt.Sprintf("%d × %s, %s RAM; %s, kernel %s; %s; %s, %s, %s, %s",
		runtime.NumCPU(), cpu, mem, osName, firstLine("uname", "-r"), runtime.Version(),
		nginx, wrk, firstLine("iperf3", "--version"), ab)
}

// goal is one target of the project and how the run did against it.
type goal struct {
	text, got string
	met, ok   bool
}

func metric(ms []*report.Metric, key string) *report.Metric {
	for _, m := range ms {
		if m.Key == key {
			return m
		}
	}
	return nil
}

// goals checks the run against issue 17's targets for the data path.
func goals(res *results) []goal {
	var out []goal
	ratio := func(key, a, b, text string, want float64) {
		m := metric(res.main, key)
		if m == nil {
			return
		}
		if r, ok := m.Ratio(a, b); ok {
			out = append(out, goal{text: text, got: fmt.Sprintf("%.2f×", r), met: r >= want, ok: true})
		}
	}
	added := func(key, text, unit string, limit float64) {
		m := metric(res.main, key)
		if m == nil {
			return
		}
		a, ok1 := m.Median(report.MPShim)
		b, ok2 := m.Median(report.Native)
		if ok1 && ok2 {
			out = append(out, goal{text: text, got: fmt.Sprintf("%+.3g %s", a-b, unit), met: a-b <= limit, ok: true})
		}
	}
	ratio("nginx-c64-rps", report.MPShim, report.Native, "nginx 1 KiB keep-alive ≥ 0.5× native (wrk -c64)", 0.5)
	for _, p := range redisPipelines {
		ratio(fmt.Sprintf("redis-get-P%d", p), report.MPShim, report.Native, fmt.Sprintf("redis GET -P%d ≥ 0.5× native", p), 0.5)
		ratio(fmt.Sprintf("redis-set-P%d", p), report.MPShim, report.Native, fmt.Sprintf("redis SET -P%d ≥ 0.5× native", p), 0.5)
	}
	ratio("memcached", report.MPShim, report.Native, "memcached (memaslap) ≥ 0.5× native", 0.5)
	added("udp-p50", "added UDP round trip ≤ 50 µs (p50)", "µs", 50)
	for _, k := range []string{"bulk-up", "bulk-down"} {
		dir := "to the server"
		if k == "bulk-down" {
			dir = "from the server"
		}
		ratio(k, report.MPShim, report.Native, "bulk "+dir+" ≥ 0.5× native", 0.5)
		ratio(k, report.MPShim, report.Runsc, "bulk "+dir+" ≥ 1.5× runsc", 1.5)
	}
	added("nginx-c1-p50", "added p50 at wrk -c1 ≤ 0.1 ms", "ms", 0.1)
	for _, m := range res.scale {
		if !strings.HasPrefix(m.Key, fmt.Sprintf("scale-%dins-ins", scaleINS)) {
			continue
		}
		ins, ok1 := m.Median(report.MPShim)
		iso, ok2 := metric(res.scale, fmt.Sprintf("scale-%dins-iso", scaleINS)).Median(report.MPShim)
		if ok1 && ok2 {
			out = append(out, goal{text: fmt.Sprintf("idle connections across %d INS < 25 KiB per connection (INS + isolator, nginx)", scaleINS),
				got: fmt.Sprintf("%.1f KiB", ins+iso), met: ins+iso < 25, ok: true})
		}
	}
	return out
}

func ringTable(rep *ringbench.Report, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Control-call round trip, 64-byte request and reply, %d calls per client thread (bench/ring):\n\n", n)
	b.WriteString("| threads | ring calls/s | seqpacket calls/s | ring p50 | seqpacket p50 | ring p99 | seqpacket p99 | ring/seqpacket rate |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, t := range ringbench.Threads {
		r, s := rep.Results[ringbench.Key("ring", t)], rep.Results[ringbench.Key("seqpacket", t)]
		fmt.Fprintf(&b, "| %d | %.0f | %.0f | %v | %v | %v | %v | %.2f |\n", t, r.Rate(), s.Rate(), r.P50, s.P50, r.P99, s.P99, r.Rate()/s.Rate())
	}
	fmt.Fprintf(&b, "\nRing futex wake-ups per call: consumer %.3f, callers %.3f.\n", rep.ConsumerWakes, rep.CallerWakes)
	return b.String()
}

// render is the body of the results file and, without the profiles, of
// the BENCHMARKS.md section.
func render(o options, res *results, png string, withProfile bool) string {
	var b strings.Builder
	mode := "full"
	if o.quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "Run of %s (%s mode, %d round(s), %v per wrk/iperf3 run, ab %d connections, scale N=%d), %s.\n\n",
		res.started.UTC().Format("2006-01-02 15:04 MST"), mode, o.rounds, o.duration, o.abN, o.scaleN, res.ended.Sub(res.started).Round(1e9))
	fmt.Fprintf(&b, "Machine: %s.\n\nLoad average before / after: %s / %s (other work shares this machine; figures are medians of the rounds, ± is half their spread when it is 5%% or more).\n\n",
		res.machine, res.loadBefore, res.loadAfter)
	fmt.Fprintf(&b, "Wire: one plain veth pair between the client namespace and the gw namespace; each side's server namespace hangs off the gw end by a macvlan. CPU pinning: %s.\n\n", res.pinning)
	if len(res.main) > 0 {
		b.WriteString(report.Table(res.main, res.sides))
		b.WriteString("\n")
	}
	if len(res.scale) > 0 {
		var ss []string
		for _, s := range res.sides {
			if s != report.Runsc {
				ss = append(ss, s)
			}
		}
		b.WriteString(report.Table(res.scale, ss))
		b.WriteString("\n")
		for _, l := range res.scaleN {
			fmt.Fprintf(&b, "- %s\n", l)
		}
		b.WriteString("\n")
	}
	if gs := goals(res); len(gs) > 0 {
		b.WriteString("Goals:\n\n")
		for _, g := range gs {
			mark := "missed"
			if g.met {
				mark = "met"
			}
			fmt.Fprintf(&b, "- %s: %s (%s)\n", g.text, g.got, mark)
		}
		b.WriteString("\n")
	}
	if res.ring != nil {
		b.WriteString(ringTable(res.ring, res.ringN))
		b.WriteString("\n")
	}
	if len(res.notes) > 0 {
		b.WriteString("Notes from the run:\n\n")
		for _, n := range res.notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		b.WriteString("\n")
	}
	if res.profile != "" && withProfile {
		b.WriteString(res.profile)
		b.WriteString("\n")
	}
	if png != "" {
		fmt.Fprintf(&b, "Plot: `%s`.\n", png)
	}
	return b.String()
}

// write prints the results and writes the results file, the plot and, for
// full runs, the latest section of the benchmarks document.
func write(o options, res *results) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	stem := res.started.Format("2006-01-02")
	if o.quick {
		stem += "-quick"
	}
	md := filepath.Join(o.out, stem+".md")
	png := filepath.Join(o.out, stem+".png")
	if err := plot(append(append([]*report.Metric{}, res.main...), res.scale...), res.sides, filepath.Join(o.out, stem), png,
		"mpshim benchmark "+stem+": each side's median over native's"); err != nil {
		slog.Warn("no plot", "err", err)
		png = ""
	}
	body := render(o, res, png, true)
	fmt.Println()
	fmt.Print(body)
	var args []string
	if o.quick {
		args = append(args, "--quick")
	}
	if o.peers != "" {
		args = append(args, "--peers="+o.peers)
	}
	if o.profile {
		args = append(args, "--profile")
	}
	if o.only != "" {
		args = append(args, "--only="+o.only)
	}
	cmd := "make bench"
	switch len(args) {
	case 0:
	case 1:
		cmd += " ARGS=" + args[0]
	default:
		cmd += fmt.Sprintf(" ARGS=%q", strings.Join(args, " "))
	}
	doc := fmt.Sprintf("# mpshim benchmark, %s\n\nCommand: `%s` (bench/cmd/mpbench).\n\n%s", stem, cmd, body)
	if err := os.WriteFile(md, []byte(doc), 0o644); err != nil {
		return err
	}
	slog.Info("results written", "file", md, "plot", png)
	if o.quick || o.doc == "" || res.aborted {
		return nil
	}
	section := fmt.Sprintf("Latest full run (`%s`, results and profiles in `%s`):\n\n%s", cmd, md, render(o, res, png, false))
	return updateDoc(o.doc, section)
}

// updateDoc replaces the marked section of the document at path.
func updateDoc(path, section string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("benchmarks document: %w", err)
	}
	i, j := bytes.Index(b, []byte(docBegin)), bytes.Index(b, []byte(docEnd))
	if i < 0 || j < i {
		return fmt.Errorf("%s lacks the %s … %s markers", path, docBegin, docEnd)
	}
	out := append([]byte{}, b[:i+len(docBegin)]...)
	out = append(out, '\n')
	out = append(out, section...)
	out = append(out, b[j:]...)
	return os.WriteFile(path, out, 0o644)
}

// plot draws a panel per kind of figure with gnuplot (Debian
// gnuplot-nox): each side's median over native's, one bar per side. The
// data files are stem-KIND.dat.
func plot(ms []*report.Metric, sides []string, stem, png, title string) error {
	var panels []report.Panel
	for _, k := range report.Kinds {
		p := report.NewPanel(ms, k, sides)
		if p == nil {
			continue
		}
		dat := fmt.Sprintf("%s-%s.dat", stem, strings.Fields(k.String())[0])
		if err := os.WriteFile(dat, []byte(p.Data), 0o644); err != nil {
			return err
		}
		p.Data = dat
		panels = append(panels, *p)
	}
	if len(panels) == 0 {
		return fmt.Errorf("no figure has native and another side")
	}
	if _, err := exec.LookPath("gnuplot"); err != nil {
		return fmt.Errorf("gnuplot missing (scripts/deps.sh bench installs gnuplot-nox): %w", err)
	}
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(report.GnuplotScript(panels, sides, png, title))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	return nil
}
