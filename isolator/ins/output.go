package ins

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// keptOutput bounds the log an INS keeps while nobody reads it.
const keptOutput = 64 << 10

// Output is where an INS process writes its log: its standard error, a
// pipe the daemon reads. When that write fails (the daemon died, its end
// of the pipe with it), the lines are kept, the latest keptOutput bytes of
// them, and written first to the pipe a successor hands in (ManageLog), so
// the successor's log tells what the INS did while no daemon ran.
var Output io.Writer = output

var output = &outputBuffer{dst: func() io.Writer { return os.Stderr }}

// outputBuffer writes to dst() and keeps what it cannot write.
type outputBuffer struct {
	dst func() io.Writer

	mu      sync.Mutex
	kept    [][]byte
	size    int
	dropped int
}

func (o *outputBuffer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.kept) == 0 {
		if _, err := o.dst().Write(p); err == nil {
			return len(p), nil
		}
	}
	o.kept = append(o.kept, append([]byte(nil), p...))
	o.size += len(p)
	for o.size > keptOutput && len(o.kept) > 1 {
		o.size -= len(o.kept[0])
		o.kept = o.kept[1:]
		o.dropped++
	}
	return len(p), nil
}

// flush writes what was kept to dst(), oldest first, saying how many
// earlier lines were dropped; what cannot be written stays kept.
func (o *outputBuffer) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	w := o.dst()
	if o.dropped > 0 {
		if _, err := fmt.Fprintf(w, "(%d earlier lines written while no daemon ran were dropped)\n", o.dropped); err != nil {
			return
		}
		o.dropped = 0
	}
	for len(o.kept) > 0 {
		if _, err := w.Write(o.kept[0]); err != nil {
			return
		}
		o.size -= len(o.kept[0])
		o.kept = o.kept[1:]
	}
}
