package uplink

import "math"

// HashBytes returns a 64-bit FNV-1a hash of b, for use as a Pick key (for
// example over a remote address). It is stable across processes and runs so
// a sticky mapping survives restarts of an INS.
func HashBytes(b []byte) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for _, c := range b {
		h ^= uint64(c)
		h *= prime
	}
	return mix64(h)
}

func hashString(s string) uint64 { return HashBytes([]byte(s)) }

// mix64 is the splitmix64 finaliser; it spreads FNV's weak low bits.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func ln(x float64) float64 { return math.Log(x) }
