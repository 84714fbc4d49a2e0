package sdnotify

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// listen opens a datagram socket at name and returns it.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 256)
	n, err := c.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:n])
}

func TestNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	abstract := fmt.Sprintf("@mpshim-sdnotify-test-%d", os.Getpid())
	for _, addr := range []string{path, abstract} {
		c := listen(t, addr)
		t.Setenv(Env, addr)
		for _, state := range []string{Ready, Stopping, "STATUS=serving\nREADY=1"} {
			sent, err := Notify(state)
			if !sent || err != nil {
				t.Fatalf("Notify(%q) to %s: sent %v, %v", state, addr, sent, err)
			}
			if got := recv(t, c); got != state {
				t.Fatalf("%s received %q, want %q", addr, got, state)
			}
		}
	}
}

func TestNotifyErrors(t *testing.T) {
	t.Setenv(Env, "")
	if sent, err := Notify(Ready); sent || err != nil {
		t.Fatalf("Notify without %s: sent %v, %v; want nothing", Env, sent, err)
	}
	for _, addr := range []string{"relative.sock", filepath.Join(t.TempDir(), "absent.sock")} {
		t.Setenv(Env, addr)
		if sent, err := Notify(Ready); !sent || err == nil {
			t.Errorf("Notify to %q: sent %v, err %v; want an error", addr, sent, err)
		}
	}
}
