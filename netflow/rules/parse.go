package rules

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// maxQuantity bounds what ParseRate and ParseSize return, well inside
// uint64 so that callers may multiply by small factors.
const maxQuantity = 1 << 50

// ParseRate reads a rate as "1000", "10k", "2.5M" or "1G": decimal SI
// suffixes k (10^3), M, G, T. The result must be a whole number.
func ParseRate(s string) (uint64, error) {
	v, err := parseQuantity(s, 1000, map[string]int{"": 0, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4})
	if err != nil {
		return 0, fmt.Errorf("rate %q: %w (examples: 1000, 10k, 2.5M, 1G)", s, err)
	}
	return v, nil
}

// ParseSize reads a byte size as "65536", "64K", "1.5M" or "1G": binary
// suffixes K (2^10), M, G, also written KiB, MiB, GiB. The result must be a
// whole number of bytes.
func ParseSize(s string) (uint64, error) {
	v, err := parseQuantity(s, 1024, map[string]int{"": 0, "k": 1, "K": 1, "KiB": 1, "M": 2, "MiB": 2, "G": 3, "GiB": 3})
	if err != nil {
		return 0, fmt.Errorf("size %q: %w (examples: 65536, 64K, 1.5M, 1G)", s, err)
	}
	return v, nil
}

// parseQuantity reads digits, an optional fraction and a suffix from
// suffixes (the power of base it stands for), in integer arithmetic.
func parseQuantity(s string, base uint64, suffixes map[string]int) (uint64, error) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	whole := s[:i]
	frac := ""
	if i < len(s) && s[i] == '.' {
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		frac = s[i+1 : j]
		if frac == "" {
			return 0, fmt.Errorf("no digits after the point")
		}
		i = j
	}
	if whole == "" {
		return 0, fmt.Errorf("want a number")
	}
	if len(whole) > 16 || len(frac) > 9 {
		return 0, fmt.Errorf("too many digits")
	}
	pow, ok := suffixes[s[i:]]
	if !ok {
		return 0, fmt.Errorf("unknown suffix %q", s[i:])
	}
	mult := uint64(1)
	for range pow {
		mult *= base
	}
	w, err := strconv.ParseUint(whole, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad number")
	}
	if w > maxQuantity/mult {
		return 0, fmt.Errorf("too large")
	}
	v := w * mult
	if frac != "" {
		f, _ := strconv.ParseUint(frac, 10, 64)
		den := uint64(1)
		for range len(frac) {
			den *= 10
		}
		// f < den, so f*mult/den < mult: the quotient fits.
		hi, lo := bits.Mul64(f, mult)
		q, r := bits.Div64(hi, lo, den)
		if r != 0 {
			return 0, fmt.Errorf("not a whole number")
		}
		v += q
	}
	if v > maxQuantity {
		return 0, fmt.Errorf("too large")
	}
	return v, nil
}

// FormatRate prints bits per second with an SI unit.
func FormatRate(bps uint64) string {
	units := []string{"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"}
	v, u := float64(bps), 0
	for v >= 1000 && u < len(units)-1 {
		v /= 1000
		u++
	}
	s := strconv.FormatFloat(v, 'f', 2, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + " " + units[u]
}
