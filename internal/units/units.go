// Package units formats quantities for the CLIs' tables.
package units

import "strconv"

// Bytes formats a byte count with a binary prefix: 999B, 1.2K, 3.4M, 5.6G.
func Bytes(b float64) string {
	switch {
	case b >= 1<<30:
		return strconv.FormatFloat(b/(1<<30), 'f', 1, 64) + "G"
	case b >= 1<<20:
		return strconv.FormatFloat(b/(1<<20), 'f', 1, 64) + "M"
	case b >= 1<<10:
		return strconv.FormatFloat(b/(1<<10), 'f', 1, 64) + "K"
	}
	return strconv.FormatFloat(b, 'f', 0, 64) + "B"
}
