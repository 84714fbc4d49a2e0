// Package report turns benchmark samples into the figures the harness
// prints: the median of each side, the ratios mpshim/native and
// mpshim/netstack, a Markdown table and a gnuplot data file.
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
)

// Sides lists the sides in table order.
var Sides = []string{Native, Netstack, MPShim}

// Metric is one figure measured on some or all sides.
type Metric struct {
	// Key identifies the metric (for goals and plots), Name describes it.
	Key, Name string
	// Unit is printed after the values ("req/s", "ms", "Gbit/s", …).
	Unit string
	// Samples holds each side's measurements.
	Samples map[string][]float64
}

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

// Table renders metrics as a Markdown table: the median of each side
// (with half the spread of the samples when it is 5% or more), then
// mpshim/native and mpshim/netstack.
func Table(metrics []*Metric) string {
	var b strings.Builder
	b.WriteString("| figure | unit | native | netstack | mpshim | mpshim/native | mpshim/netstack |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|\n")
	for _, m := range metrics {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", m.Name, m.Unit,
			cell(m, Native), cell(m, Netstack), cell(m, MPShim),
			ratioCell(m, MPShim, Native), ratioCell(m, MPShim, Netstack))
	}
	return b.String()
}

// PlotData renders a gnuplot data file: one line per metric that has all
// three sides and positive ratios, with the ratios mpshim/native, netstack/native and
// mpshim/netstack; it returns the number of lines.
func PlotData(metrics []*Metric) (string, int) {
	var b strings.Builder
	b.WriteString("# metric mpshim/native netstack/native mpshim/netstack\n")
	n := 0
	for _, m := range metrics {
		r1, ok1 := m.Ratio(MPShim, Native)
		r2, ok2 := m.Ratio(Netstack, Native)
		r3, ok3 := m.Ratio(MPShim, Netstack)
		// The plot is on a log scale: a ratio of figures of different sign
		// (a memory delta that other work on the machine made negative)
		// has no place on it.
		if !ok1 || !ok2 || !ok3 || r1 <= 0 || r2 <= 0 || r3 <= 0 {
			continue
		}
		fmt.Fprintf(&b, "%q %.4f %.4f %.4f\n", m.Key, r1, r2, r3)
		n++
	}
	return b.String(), n
}

// GnuplotScript returns a script that draws data (a PlotData file) as
// clustered bars into png.
func GnuplotScript(data, png, title string) string {
	return fmt.Sprintf(`set terminal pngcairo size 1400,700 noenhanced font ",10"
set output %q
set title %q
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set ylabel "ratio of the sides' medians (log scale)"
set logscale y 2
set yrange [0.03:32]
set grid ytics
set xtics rotate by -30 left
set key top right
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1
plot %q using 2:xtic(1) title "mpshim/native", '' using 3 title "netstack/native", '' using 4 title "mpshim/netstack"
`, png, title, data)
}
