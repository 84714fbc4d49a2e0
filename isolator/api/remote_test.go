package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func startRemote(t *testing.T) (addr, token string, cert tls.Certificate) {
	t.Helper()
	dir := t.TempDir()
	var err error
	if token, err = EnsureToken(filepath.Join(dir, "token")); err != nil {
		t.Fatal(err)
	}
	if cert, err = LoadOrCreateCert(filepath.Join(dir, "cert.pem")); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ServeRemote(ctx, ln, cert, token, func(_ context.Context, r Request) Response {
			return Response{OK: true, Error: "echo " + r.Op}
		}, discardLog())
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeRemote: %v", err)
		}
	})
	return ln.Addr().String(), token, cert
}

func TestRemoteAPI(t *testing.T) {
	addr, token, cert := startRemote(t)
	pin, err := ParsePin(Fingerprint(cert))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialRemote(ctx, addr, token, pin)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	for _, op := range []string{"ls", "flows"} {
		resp, err := c.Call(ctx, Request{Op: op})
		if err != nil || resp.Error != "echo "+op {
			t.Fatalf("call %s: %+v %v", op, resp, err)
		}
	}
	c.Close()

	if _, err := DialRemote(ctx, addr, token+"x", pin); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("wrong token: %v", err)
	}
	bad := pin
	bad[0] ^= 1
	if _, err := DialRemote(ctx, addr, token, bad); err == nil || !strings.Contains(err.Error(), "fingerprint") {
		t.Fatalf("wrong pin: %v", err)
	}
	// A client that sends requests without the token line gets nothing
	// but an error and a closed connection.
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	json.NewEncoder(conn).Encode(Request{Op: "ls"})
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil || resp.OK {
		t.Fatalf("unauthenticated request answered %+v %v", resp, err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection left open after failed auth")
	}
}

func TestTargetDial(t *testing.T) {
	addr, token, cert := startRemote(t)
	dir := t.TempDir()
	tf := filepath.Join(dir, "tok")
	os.WriteFile(tf, []byte(token+"\n"), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tg := Target{Addr: "tls://" + addr, TokenFile: tf, Pin: Fingerprint(cert)}
	c, err := tg.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for name, tg := range map[string]Target{
		"no pin":        {Addr: "tls://" + addr, TokenFile: tf},
		"tcp scheme":    {Addr: "tcp://" + addr, TokenFile: tf, Pin: Fingerprint(cert)},
		"missing token": {Addr: "tls://" + addr, TokenFile: filepath.Join(dir, "none"), Pin: Fingerprint(cert)},
		"no socket":     {Addr: filepath.Join(dir, "api.sock")},
	} {
		if c, err := tg.Dial(ctx); err == nil {
			c.Close()
			t.Errorf("%s: dial succeeded", name)
		}
	}
	os.Chmod(tf, 0o644)
	if _, err := ReadToken(tf); err == nil {
		t.Error("world-readable token file accepted")
	}
}

func TestParsePin(t *testing.T) {
	want := "sha256:" + strings.Repeat("ab", 32)
	for _, s := range []string{want, strings.Repeat("AB", 32), "sha256 Fingerprint=" + strings.TrimSuffix(strings.Repeat("AB:", 32), ":"), " " + want + "\n"} {
		p, err := ParsePin(s)
		if err != nil || p[0] != 0xab || p[31] != 0xab {
			t.Errorf("ParsePin(%q) = %x, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "sha256:abcd", strings.Repeat("zz", 32), "md5:" + strings.Repeat("ab", 16)} {
		if _, err := ParsePin(s); err == nil {
			t.Errorf("ParsePin(%q) accepted", s)
		}
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
