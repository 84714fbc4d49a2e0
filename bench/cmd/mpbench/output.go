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
	ratio("nginx-c64-rps", report.MPShim, report.Netstack, "nginx under the shim ≥ 0.85× netstack req/s (wrk -c64)", 0.85)
	ratio("nginx-c256-rps", report.MPShim, report.Netstack, "nginx under the shim ≥ 0.85× netstack req/s (wrk -c256)", 0.85)
	for _, c := range []int{1, 64} {
		if m := metric(res.main, fmt.Sprintf("nginx-c%d-p50", c)); m != nil {
			a, ok1 := m.Median(report.MPShim)
			b, ok2 := m.Median(report.Native)
			if ok1 && ok2 {
				out = append(out, goal{text: fmt.Sprintf("added p50 over native ≤ 0.7 ms (wrk -c%d)", c), got: fmt.Sprintf("%+.2f ms", a-b), met: a-b <= 0.7, ok: true})
			}
		}
	}
	ratio("bulk-P1", report.MPShim, report.Netstack, "bulk download ≥ 0.8× netstack (1 stream)", 0.8)
	ratio("bulk-P4", report.MPShim, report.Netstack, "bulk download ≥ 0.8× netstack (4 streams)", 0.8)
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
	if len(res.main) > 0 {
		b.WriteString(report.Table(res.main))
		b.WriteString("\n")
	}
	if len(res.scale) > 0 {
		b.WriteString(report.Table(res.scale))
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
	if err := plot(append(append([]*report.Metric{}, res.main...), res.scale...), filepath.Join(o.out, stem+".dat"), png,
		"mpshim benchmark "+stem); err != nil {
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
	if o.profile {
		args = append(args, "--profile")
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
	if o.quick || o.doc == "" || o.only != "" || res.aborted {
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

// plot draws the ratios with gnuplot (Debian gnuplot-nox).
func plot(ms []*report.Metric, dat, png, title string) error {
	data, n := report.PlotData(ms)
	if n == 0 {
		return fmt.Errorf("no figure has all three sides")
	}
	if err := os.WriteFile(dat, []byte(data), 0o644); err != nil {
		return err
	}
	if _, err := exec.LookPath("gnuplot"); err != nil {
		return fmt.Errorf("gnuplot missing (scripts/deps.sh bench installs gnuplot-nox): %w", err)
	}
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(report.GnuplotScript(dat, png, title))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	return nil
}
