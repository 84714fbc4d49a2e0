// Command mkheader writes the C layout header of the ring package.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/mpshim/mpshim/ring"
)

func main() {
	out := flag.String("o", "mpring_layout.h", "output file")
	flag.Parse()
	if err := os.WriteFile(*out, ring.CHeader(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "mkheader:", err)
		os.Exit(1)
	}
}
