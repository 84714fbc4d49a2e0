package ins

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// failing is a writer that fails while broken, like a pipe whose reader
// died.
type failing struct {
	bytes.Buffer
	broken bool
}

func (f *failing) Write(p []byte) (int, error) {
	if f.broken {
		return 0, errors.New("broken pipe")
	}
	return f.Buffer.Write(p)
}

// TestOutputKeptWhileNobodyReads: lines that cannot be written are kept,
// the latest keptOutput bytes, and written in order (after a note of how
// many were dropped) once there is a reader again; later lines follow
// them.
func TestOutputKeptWhileNobodyReads(t *testing.T) {
	w := &failing{}
	o := &outputBuffer{dst: func() io.Writer { return w }}
	fmt.Fprintf(o, "before\n")
	w.broken = true
	line := strings.Repeat("x", 1000)
	n := keptOutput/1001 + 10
	for i := range n {
		fmt.Fprintf(o, "%d %s\n", i, line)
	}
	if w.Len() != len("before\n") {
		t.Fatalf("written while broken: %q", w.String())
	}
	w.broken = false
	o.flush()
	fmt.Fprintf(o, "after\n")
	lines := strings.Split(strings.TrimSuffix(w.String(), "\n"), "\n")
	if lines[0] != "before" || !strings.Contains(lines[1], "earlier lines") || lines[len(lines)-1] != "after" {
		t.Fatalf("output: first %q, %q; last %q", lines[0], lines[1], lines[len(lines)-1])
	}
	kept := lines[2 : len(lines)-1]
	if len(kept) == 0 || len(kept)*1001 > keptOutput+1001 || !strings.HasPrefix(kept[len(kept)-1], fmt.Sprint(n-1)+" ") {
		t.Errorf("kept %d lines, the last %.10q; want the latest within %d bytes", len(kept), kept[len(kept)-1], keptOutput)
	}
}
