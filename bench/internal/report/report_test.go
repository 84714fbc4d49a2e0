package report

import (
	"strings"
	"testing"
)

func TestMedianRatioTable(t *testing.T) {
	m := &Metric{Key: "rps64", Name: "nginx req/s", Unit: "req/s"}
	for _, v := range []float64{100, 300, 200} {
		m.Add(Native, v)
	}
	m.Add(Netstack, 80)
	m.Add(Netstack, 120)
	m.Add(MPShim, 50)
	if v, _ := m.Median(Native); v != 200 {
		t.Fatalf("median of 100,300,200 = %v", v)
	}
	if v, _ := m.Median(Netstack); v != 100 {
		t.Fatalf("median of 80,120 = %v", v)
	}
	if r, _ := m.Ratio(MPShim, Native); r != 0.25 {
		t.Fatalf("mpshim/native = %v", r)
	}
	if _, ok := m.Ratio(MPShim, "other"); ok {
		t.Fatal("ratio against a side without samples")
	}
	empty := &Metric{Key: "x", Name: "only native", Unit: "s"}
	empty.Add(Native, 1.5)
	tab := Table([]*Metric{m, empty}, []string{Native, Runsc, Netstack, MPShim})
	for _, want := range []string{
		"| figure | unit | native | runsc | netstack | mpshim | mpshim/native | mpshim/runsc | mpshim/netstack |",
		"| nginx req/s | req/s | 200.0 (±50%) | – | 100.0 (±20%) | 50.00 | 0.25 | – | 0.50 |",
		"| only native | s | 1.50 | – | – | – | – | – | – |",
	} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
	if tab2 := Table([]*Metric{m}, []string{Native, MPShim}); !strings.Contains(tab2, "| nginx req/s | req/s | 200.0 (±50%) | 50.00 | 0.25 |\n") {
		t.Errorf("two-side table:\n%s", tab2)
	}
}

func TestPlotData(t *testing.T) {
	sides := []string{Native, Runsc, MPShim}
	rps := &Metric{Key: "rps", Name: "req/s", Unit: "req/s", Kind: Throughput}
	rps.Add(Native, 200)
	rps.Add(MPShim, 50)
	rps.Add(Runsc, 10)
	lat := &Metric{Key: "p50", Name: "p50", Unit: "ms", Kind: Latency}
	lat.Add(Native, 0.1)
	lat.Add(MPShim, 0.2)
	onlyNative := &Metric{Key: "x", Name: "x", Unit: "req/s", Kind: Throughput}
	onlyNative.Add(Native, 3)
	noNative := &Metric{Key: "ins", Name: "ins", Unit: "µs", Kind: CPU}
	noNative.Add(MPShim, 3)
	neg := &Metric{Key: "slab", Name: "slab", Unit: "KiB", Kind: Memory}
	neg.Add(Native, 10)
	neg.Add(MPShim, -3)
	all := []*Metric{rps, lat, onlyNative, noNative, neg}
	for _, tc := range []struct {
		k    Kind
		n    int
		want string
	}{
		{Throughput, 1, `"rps" 1.0000 0.0500 0.2500`},
		{Latency, 1, `"p50" 1.0000 ? 2.0000`},
		{CPU, 0, ""},
		{Memory, 0, ""},
	} {
		data, n := PlotData(all, tc.k, sides)
		if n != tc.n || !strings.Contains(data, tc.want) {
			t.Errorf("%v: %d lines, want %d with %q:\n%s", tc.k, n, tc.n, tc.want, data)
		}
	}
	if p := NewPanel(all, Throughput, sides); p == nil || p.Lo != 0.015625 || p.Hi != 2 {
		t.Errorf("throughput panel %+v: want range 1/64..2 around 0.05..1", p)
	}
	if p := NewPanel(all, CPU, sides); p != nil {
		t.Errorf("CPU panel without data: %+v", p)
	}
	script := GnuplotScript([]Panel{{Kind: Throughput, Data: "/t.dat", Lo: 0.5, Hi: 2}, {Kind: Latency, Data: "/l.dat", Lo: 0.5, Hi: 4}}, sides, "/o.png", "title")
	for _, want := range []string{"multiplot layout 2,1", "set yrange [0.5:4]", `"/t.dat" using 2:xtic(1) title "native", '' using 3 title "runsc", '' using 4 title "mpshim"`, "latency (lower is better)"} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
}

func TestFormatValue(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 12345.6: "12346", 123.45: "123.5", 1.234: "1.23", 0.01234: "0.012"} {
		if got := FormatValue(v); got != want {
			t.Errorf("FormatValue(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestMedianOfSlice(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := append([]float64(nil), tc.in...)
		if got := Median(in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Errorf("Median(%v) reordered its argument to %v", tc.in, in)
				break
			}
		}
	}
}
