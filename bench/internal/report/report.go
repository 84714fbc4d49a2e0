// Package report turns benchmark samples into the figures the harness
// prints: the median of each side, the ratios of mpshim to every other
// side, a Markdown table and a gnuplot plot with a panel per kind of
// figure.
package report

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
)

// The sides every figure is measured on.
const (
	// Native is the program on the kernel stack over the same uplink.
	Native = "native"
	// Netstack is a Go server listening through mpnet on one INS.
	Netstack = "netstack"
	// MPShim is the program under the shim, served by the INS.
	MPShim = "mpshim"
	// Runsc is the program inside gVisor's runsc with --network=sandbox:
	// the peer that also runs a user-space network stack.
	Runsc = "runsc"
)

// Sides lists every side in table order.
var Sides = []string{Native, Runsc, Netstack, MPShim}

// Kind says what a figure measures and which way is better; the plot
// draws one panel per kind.
type Kind int

// The kinds of figures.
const (
	// Other figures (counts, times to set up) are not plotted.
	Other Kind = iota
	// Throughput: higher is better.
	Throughput
	// Latency: lower is better.
	Latency
	// CPU per unit of work: lower is better.
	CPU
	// Memory per unit: lower is better.
	Memory
)

// Kinds lists the plotted kinds in panel order.
var Kinds = []Kind{Throughput, Latency, CPU, Memory}

// String names the kind for the plot's panels.
func (k Kind) String() string {
	switch k {
	case Throughput:
		return "throughput (higher is better)"
	case Latency:
		return "latency (lower is better)"
	case CPU:
		return "CPU per unit of work (lower is better)"
	case Memory:
		return "memory (lower is better)"
	}
	return "other"
}

// Metric is one figure measured on some or all sides.
type Metric struct {
	// Key identifies the metric (for goals and plots), Name describes it.
	Key, Name string
	// Unit is printed after the values ("req/s", "ms", "Gbit/s", …).
	Unit string
	// Kind places the figure in a panel of the plot (Other: none).
	Kind Kind
	// Samples holds each side's measurements.
	Samples map[string][]float64
}

// Has reports whether side has a sample.
func (m *Metric) Has(side string) bool { return len(m.Samples[side]) > 0 }

// Add records one sample for side.
func (m *Metric) Add(side string, v float64) {
	if m.Samples == nil {
		m.Samples = map[string][]float64{}
	}
	m.Samples[side] = append(m.Samples[side], v)
}

// Median returns the median sample of side and whether there is one.
func (m *Metric) Median(side string) (float64, bool) {
	if len(m.Samples[side]) == 0 {
		return 0, false
	}
	return Median(m.Samples[side]), true
}

// Median returns the median of v (the mean of the middle two for an even
// count), 0 for none. v is not changed.
func Median(v []float64) float64 {
	s := slices.Clone(v)
	if len(s) == 0 {
		return 0
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// LoadAvg is the machine's 1, 5 and 15 minute load average ("0.52 0.61
// 0.70"), "?" if it cannot be read: how much other work shared the
// machine with a run.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// Ratio returns median(a)/median(b) and whether both exist and b ≠ 0.
func (m *Metric) Ratio(a, b string) (float64, bool) {
	x, ok1 := m.Median(a)
	y, ok2 := m.Median(b)
	if !ok1 || !ok2 || y == 0 {
		return 0, false
	}
	return x / y, true
}

// Spread returns (max-min)/median of side's samples, a rough noise figure.
func (m *Metric) Spread(side string) (float64, bool) {
	s := m.Samples[side]
	med, ok := m.Median(side)
	if !ok || len(s) < 2 || med == 0 {
		return 0, false
	}
	return (slices.Max(s) - slices.Min(s)) / med, true
}

// FormatValue prints v with a precision that suits its size.
func FormatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func cell(m *Metric, side string) string {
	v, ok := m.Median(side)
	if !ok {
		return "–"
	}
	s := FormatValue(v)
	if sp, ok := m.Spread(side); ok && sp >= 0.1 {
		s += fmt.Sprintf(" (±%.0f%%)", sp*50)
	}
	return s
}

func ratioCell(m *Metric, a, b string) string {
	r, ok := m.Ratio(a, b)
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.2f", r)
}

// Table renders metrics as a Markdown table: the median of each of sides
// (with half the spread of the samples when it is 5% or more), then the
// ratio of mpshim to every other side.
func Table(metrics []*Metric, sides []string) string {
	var b strings.Builder
	var others []string
	b.WriteString("| figure | unit |")
	for _, s := range sides {
		fmt.Fprintf(&b, " %s |", s)
		if s != MPShim {
			others = append(others, s)
		}
	}
	for _, s := range others {
		fmt.Fprintf(&b, " mpshim/%s |", s)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|", len(sides)+len(others)) + "\n")
	for _, m := range metrics {
		fmt.Fprintf(&b, "| %s | %s |", m.Name, m.Unit)
		for _, s := range sides {
			fmt.Fprintf(&b, " %s |", cell(m, s))
		}
		for _, s := range others {
			fmt.Fprintf(&b, " %s |", ratioCell(m, MPShim, s))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// PlotData renders the gnuplot data file of one panel: a line per metric
// (by key) of kind k that native and at least one other of sides measured, with
// each side's median divided by native's ("?" where a side has none), in
// the order of sides; it returns the number of lines. Within a panel every
// figure points the same way (see Kind), and the plot is on a log scale,
// so a ratio that is not positive (a memory delta other work on the
// machine made negative) is left out.
func PlotData(metrics []*Metric, k Kind, sides []string) (string, int) {
	p := plotPanel(metrics, k, sides)
	return p.Data, p.n
}

// Panel is one panel of the plot: its kind, its data (a PlotData file's
// contents before the harness writes it, then the file's path) and the
// range of its ratios.
type Panel struct {
	Kind   Kind
	Data   string
	Lo, Hi float64
	n      int
}

// NewPanel returns the panel of kind k, nil if no metric has data for it.
func NewPanel(metrics []*Metric, k Kind, sides []string) *Panel {
	p := plotPanel(metrics, k, sides)
	if p.n == 0 {
		return nil
	}
	return &p
}

func plotPanel(metrics []*Metric, k Kind, sides []string) Panel {
	var b strings.Builder
	b.WriteString("# metric " + strings.Join(sides, " ") + " (median / native median)\n")
	n := 0
	lo, hi := 1.0, 1.0
	for _, m := range metrics {
		if m.Kind != k {
			continue
		}
		var cols []string
		others := 0
		for _, s := range sides {
			r, ok := m.Ratio(s, Native)
			switch {
			case !ok || r <= 0:
				cols = append(cols, "?")
			default:
				cols = append(cols, fmt.Sprintf("%.4f", r))
				if s != Native {
					others++
				}
			}
		}
		if others == 0 || cols[slices.Index(sides, Native)] == "?" {
			continue
		}
		for _, s := range sides {
			if r, ok := m.Ratio(s, Native); ok && r > 0 {
				lo, hi = min(lo, r), max(hi, r)
			}
		}
		fmt.Fprintf(&b, "%q %s\n", m.Key, strings.Join(cols, " "))
		n++
	}
	// Whole powers of two around the data, so that a bar of 1 shows.
	return Panel{Kind: k, Data: b.String(), n: n,
		Lo: math.Pow(2, math.Floor(math.Log2(lo))-1), Hi: math.Pow(2, math.Ceil(math.Log2(hi))+1)}
}

// GnuplotScript returns a script that draws panels (PlotData files) into
// png, one below the other, as clustered bars with one bar per side.
func GnuplotScript(panels []Panel, sides []string, png, title string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `set terminal pngcairo size 1400,%d noenhanced font ",10"
set output %q
set multiplot layout %d,1 title %q
set datafile missing "?"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set logscale y 2
set grid ytics
set xtics rotate by -15 left
set key outside right top
`, 120+360*len(panels), png, len(panels), title)
	for _, p := range panels {
		fmt.Fprintf(&b, "set title %q\nset ylabel \"side / native (log scale)\"\nset yrange [%g:%g]\nunset arrow\nset arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1\n", p.Kind.String(), p.Lo, p.Hi)
		b.WriteString("plot ")
		for i, s := range sides {
			if i > 0 {
				b.WriteString(", ")
			}
			src := "''"
			if i == 0 {
				src = fmt.Sprintf("%q", p.Data)
			}
			xtic := ""
			if i == 0 {
				xtic = ":xtic(1)"
			}
			fmt.Fprintf(&b, "%s using %d%s title %q", src, i+2, xtic, s)
		}
		b.WriteString("\n")
	}
	b.WriteString("unset multiplot\n")
	return b.String()
}
