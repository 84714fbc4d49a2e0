package unixfd

import (
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestRights passes two real descriptors over a socketpair and gets them
// back as working files; a corrupt control block is an error.
func TestRights(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := unix.Sendmsg(fds[0], []byte("x"), unix.UnixRights(int(r.Fd()), int(w.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 8), make([]byte, unix.CmsgSpace(8))
	_, oobn, _, _, err := unix.Recvmsg(fds[1], buf, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	files, err := Rights(oob[:oobn], "test")
	if err != nil || len(files) != 2 {
		t.Fatalf("Rights: %d files, %v; want 2, nil", len(files), err)
	}
	defer Close(files)
	if _, err := files[1].Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2)
	if _, err := files[0].Read(got); err != nil || string(got) != "ok" {
		t.Fatalf("read through the passed pipe: %q, %v", got, err)
	}
	// A header claiming more bytes than the block holds.
	bad := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&bad[0]))
	h.Level, h.Type = unix.SOL_SOCKET, unix.SCM_RIGHTS
	h.SetLen(1000)
	if f, err := Rights(bad, "bad"); err == nil || f != nil {
		t.Fatalf("corrupt control block: %v, %v; want an error", f, err)
	}
	if f, err := Rights(nil, "none"); err != nil || f != nil {
		t.Fatalf("no control block: %v, %v", f, err)
	}
}
