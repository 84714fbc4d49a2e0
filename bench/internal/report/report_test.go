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
	tab := Table([]*Metric{m, empty})
	for _, want := range []string{
		"| nginx req/s | req/s | 200.0 (±50%) | 100.0 (±20%) | 50.00 | 0.25 | 0.50 |",
		"| only native | s | 1.50 | – | – | – | – |",
	} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
	neg := &Metric{Key: "slab", Name: "slab", Unit: "KiB"}
	neg.Add(Native, 10)
	neg.Add(Netstack, -3)
	neg.Add(MPShim, 11)
	data, n := PlotData([]*Metric{m, empty, neg})
	if n != 1 || !strings.Contains(data, `"rps64" 0.2500 0.5000 0.5000`) {
		t.Fatalf("plot data (%d lines):\n%s", n, data)
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
