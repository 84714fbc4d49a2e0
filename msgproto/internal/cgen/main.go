// Command cgen writes the files generated from the msgproto schema: the Go
// codec, the C header and the C test dump helpers. It is run by
// "go generate ./msgproto".
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/mpshim/mpshim/msgproto/internal/gen"
	"github.com/mpshim/mpshim/msgproto/internal/schema"
)

func main() {
	header := flag.String("o", "mpproto.h", "C header to write")
	goOut := flag.String("go", "messages_gen.go", "Go codec to write")
	dump := flag.String("dump", "testdata/ctest/mpdump.h", "C test dump helpers to write")
	flag.Parse()
	if err := run(*header, *goOut, *dump); err != nil {
		slog.Error("cgen failed", "err", err)
		os.Exit(1)
	}
}

func run(header, goOut, dump string) error {
	outputs := []struct {
		path string
		fn   func(schema.Schema) ([]byte, error)
	}{
		{header, gen.CHeader},
		{goOut, gen.Go},
		{dump, gen.CDump},
	}
	for _, o := range outputs {
		b, err := o.fn(schema.Proto)
		if err != nil {
			return fmt.Errorf("generate %s: %w", o.path, err)
		}
		if err := os.WriteFile(o.path, b, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", o.path, err)
		}
	}
	return nil
}
