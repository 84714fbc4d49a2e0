package ins

import (
	"bytes"
	"io"
	"os"
	"testing"
)

// TestStartProfile writes real profiles into a pipe, as the daemon asks an
// INS to, and refuses bad requests with the descriptor closed.
func TestStartProfile(t *testing.T) {
	for _, tc := range []struct {
		req ManageRequest
		ok  bool
	}{
		{ManageRequest{Op: ManageProfile, Profile: "heap"}, true},
		{ManageRequest{Op: ManageProfile, Profile: "cpu", Seconds: 1}, true},
		{ManageRequest{Op: ManageProfile, Profile: "cpu", Seconds: 0}, false},
		{ManageRequest{Op: ManageProfile, Profile: "cpu", Seconds: MaxProfileSeconds + 1}, false},
		{ManageRequest{Op: ManageProfile, Profile: "goroutine"}, false},
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		err = startProfile(tc.req, w)
		if (err == nil) != tc.ok {
			t.Fatalf("%+v: err %v, want ok=%v", tc.req, err, tc.ok)
		}
		// Either way the write end is closed: the read ends at EOF.
		b, rerr := io.ReadAll(r)
		r.Close()
		if rerr != nil {
			t.Fatal(rerr)
		}
		// pprof profiles are gzip-compressed protocol buffers.
		if tc.ok && !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Fatalf("%+v: %d bytes, not a gzip'd profile", tc.req, len(b))
		}
		if !tc.ok && len(b) != 0 {
			t.Fatalf("%+v: refused, yet wrote %d bytes", tc.req, len(b))
		}
	}
	if err := startProfile(ManageRequest{Op: ManageProfile, Profile: "heap"}, nil); err == nil {
		t.Fatal("profile without a descriptor accepted")
	}
}
