package units

import "testing"

func TestBytes(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{0, "0B"}, {999, "999B"}, {1024, "1.0K"}, {1536, "1.5K"}, {3.4 * (1 << 20), "3.4M"}, {5 << 30, "5.0G"}} {
		if got := Bytes(tc.in); got != tc.want {
			t.Errorf("Bytes(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
