package ins

import (
	"encoding/json"
	"testing"
)

func TestParseNotice(t *testing.T) {
	n, err := ParseNotice([]byte(`{"load":{"sockets":12,"placed":40}}`))
	if err != nil || n.Load == nil || n.Load.Sockets != 12 || n.Load.Placed != 40 {
		t.Fatalf("ParseNotice = %+v, %v", n, err)
	}
	for _, bad := range []string{``, `{}`, `{"load":null}`, `{"load":{"sockets":-1}}`, `[1]`, `{"load":{"sockets":"x"}}`,
		`{"load":{"sockets":1099511627777}}`, `{"load":{"placed":-3}}`} {
		if n, err := ParseNotice([]byte(bad)); err == nil {
			t.Errorf("ParseNotice(%s) = %+v, want an error", bad, n)
		}
	}
}

func FuzzParseNotice(f *testing.F) {
	f.Add([]byte(`{"load":{"sockets":12,"placed":40}}`))
	f.Add([]byte(`{"load":{}}`))
	f.Add([]byte(`{"load":{"sockets":1e400}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseNotice(b)
		if err != nil {
			return
		}
		if n.Load == nil || n.Load.Sockets < 0 {
			t.Fatalf("accepted %q as %+v", b, n)
		}
		if _, err := json.Marshal(n); err != nil {
			t.Fatal(err)
		}
	})
}
