package api

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The remote API is the same JSON-lines protocol over TLS 1.3 on TCP.
//
// Threat model: the network between client and daemon is hostile. The
// daemon presents a self-signed certificate; clients pin its SHA-256
// fingerprint (no CA is involved, so nobody else can mint a certificate the
// client accepts). Clients prove themselves with a bearer token, sent as
// the first line ({"op":"auth","token":"…"}) inside TLS and compared in
// constant time. Whoever holds the token has the full API (it can spawn
// and kill INS and change mitigation rules), so the token file must be as
// well guarded as the local API socket; the daemon refuses a token file
// that others can read. Connections that do not authenticate within
// AuthTimeout are closed.

// AuthTimeout bounds the TLS handshake and the token line.
const AuthTimeout = 10 * time.Second

const opAuth = "auth"

type authRequest struct {
	Op    string `json:"op"`
	Token string `json:"token"`
}

// MinTokenLen is the shortest token accepted.
const MinTokenLen = 16

// ReadToken reads a token file: its content without surrounding white
// space. The file must not be readable by group or others.
func ReadToken(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("API token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("API token file %s has mode %v: others may read it (chmod 600)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("API token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < MinTokenLen || strings.ContainsAny(tok, "\r\n") {
		return "", fmt.Errorf("API token file %s: want one line of at least %d characters", path, MinTokenLen)
	}
	return tok, nil
}

// EnsureToken returns the token in path, creating the file (mode 0600)
// with a random token if it does not exist.
func EnsureToken(path string) (string, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("API token: %w", err)
		}
		if err := writeFileAtomic(path, []byte(hex.EncodeToString(b[:])+"\n")); err != nil {
			return "", fmt.Errorf("API token file: %w", err)
		}
	}
	return ReadToken(path)
}

func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// LoadOrCreateCert reads the daemon's TLS key and certificate from path
// (PEM, both in one file), creating a self-signed ECDSA P-256 pair valid for
// ten years if the file does not exist.
func LoadOrCreateCert(path string) (tls.Certificate, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if b, err = newCertPEM(); err != nil {
			return tls.Certificate{}, err
		}
		if err := writeFileAtomic(path, b); err != nil {
			return tls.Certificate{}, fmt.Errorf("API certificate %s: %w", path, err)
		}
	} else if err != nil {
		return tls.Certificate{}, fmt.Errorf("API certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(b, b)
	if err != nil {
		return cert, fmt.Errorf("API certificate %s: %w", path, err)
	}
	return cert, nil
}

func newCertPEM() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("API certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("API certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "mpshim isolator API"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("API certificate: %w", err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("API certificate key: %w", err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...), nil
}

// Fingerprint returns the pin of a certificate: "sha256:" and the hex
// SHA-256 of its DER encoding.
func Fingerprint(cert tls.Certificate) string {
	if len(cert.Certificate) == 0 {
		return ""
	}
	sum := sha256.Sum256(cert.Certificate[0])
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParsePin reads a fingerprint as Fingerprint writes it, or as
// `openssl x509 -fingerprint -sha256` prints it (colons, upper case,
// optional "sha256 Fingerprint=" prefix).
func ParsePin(s string) ([32]byte, error) {
	var pin [32]byte
	v := strings.TrimSpace(s)
	if i := strings.LastIndex(v, "="); i >= 0 {
		v = v[i+1:]
	}
	v = strings.TrimPrefix(strings.ToLower(v), "sha256:")
	v = strings.ReplaceAll(v, ":", "")
	b, err := hex.DecodeString(v)
	if err != nil || len(b) != 32 {
		return pin, fmt.Errorf("API pin %q: want sha256:<64 hex digits>", s)
	}
	copy(pin[:], b)
	return pin, nil
}

// ServeRemote serves the API on ln (a TCP listener) with TLS using cert;
// each connection must send token first. It returns when ctx ends.
func ServeRemote(ctx context.Context, ln net.Listener, cert tls.Certificate, token string, h Handler, log *slog.Logger) error {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	al := &authListener{inner: tls.NewListener(ln, cfg), token: sha256.Sum256([]byte(token)), log: log,
		ready: make(chan net.Conn), done: make(chan struct{})}
	go al.run()
	return Serve(ctx, al, h, log)
}

// authListener accepts TLS connections, authenticates each on its own
// goroutine and hands the good ones to Accept.
type authListener struct {
	inner net.Listener
	token [32]byte
	log   *slog.Logger
	ready chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error
}

func (l *authListener) run() {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			l.err = err
			l.Close()
			return
		}
		go func() {
			if err := l.auth(c); err != nil {
				l.log.Warn("remote API: connection refused", "remote", c.RemoteAddr().String(), "err", err)
				c.Close()
				return
			}
			select {
			case l.ready <- c:
			case <-l.done:
				c.Close()
			}
		}()
	}
}

// readLine reads one line of at most max bytes without reading past it.
func readLine(r io.Reader, max int) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) <= max {
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}
	return nil, errors.New("line too long")
}

func (l *authListener) auth(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(AuthTimeout))
	defer c.SetDeadline(time.Time{})
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
	}
	line, err := readLine(c, 4096)
	if err != nil {
		return fmt.Errorf("auth line: %w", err)
	}
	var req authRequest
	ok := json.Unmarshal(line, &req) == nil && req.Op == opAuth
	sum := sha256.Sum256([]byte(req.Token))
	ok = ok && subtle.ConstantTimeCompare(sum[:], l.token[:]) == 1
	enc := json.NewEncoder(c)
	if !ok {
		_ = enc.Encode(Errorf("auth: wrong or missing token"))
		return errors.New("wrong or missing token")
	}
	return enc.Encode(Response{OK: true})
}

func (l *authListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

func (l *authListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.inner.Close()
	})
	return nil
}

func (l *authListener) Addr() net.Addr { return l.inner.Addr() }

// DialRemote connects to a daemon's remote API at addr (host:port),
// accepting only a certificate with fingerprint pin, and authenticates
// with token.
func DialRemote(ctx context.Context, addr, token string, pin [32]byte) (*Client, error) {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The certificate is self-signed: it is checked against the
		// pin below instead of a CA.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no certificate")
			}
			if sha256.Sum256(raw[0]) != pin {
				return fmt.Errorf("certificate fingerprint %x does not match the pin", sha256.Sum256(raw[0]))
			}
			return nil
		},
	}
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("isolator API tls://%s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(authRequest{Op: opAuth, Token: token}); err != nil {
		c.Close()
		return nil, fmt.Errorf("isolator API tls://%s: auth: %w", addr, err)
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), MaxLine)
	var resp Response
	if !sc.Scan() || json.Unmarshal(sc.Bytes(), &resp) != nil || !resp.OK {
		c.Close()
		if resp.Error != "" {
			return nil, fmt.Errorf("isolator API tls://%s: %s", addr, resp.Error)
		}
		return nil, fmt.Errorf("isolator API tls://%s: no answer to auth (%v)", addr, sc.Err())
	}
	_ = c.SetDeadline(time.Time{})
	return &Client{conn: c, sc: sc}, nil
}

// Target says how a client reaches the API: a unix socket path (optionally
// "unix://PATH") or "tls://HOST:PORT" with a token file and a pin.
type Target struct {
	Addr      string
	TokenFile string
	Pin       string
}

// Dial connects to t.
func (t Target) Dial(ctx context.Context) (*Client, error) {
	switch {
	case strings.HasPrefix(t.Addr, "tls://"):
		if t.TokenFile == "" || t.Pin == "" {
			return nil, fmt.Errorf("isolator API %s: a remote API needs --api-token-file and --api-pin", t.Addr)
		}
		pin, err := ParsePin(t.Pin)
		if err != nil {
			return nil, err
		}
		tok, err := ReadToken(t.TokenFile)
		if err != nil {
			return nil, err
		}
		return DialRemote(ctx, strings.TrimPrefix(t.Addr, "tls://"), tok, pin)
	case strings.Contains(t.Addr, "://") && !strings.HasPrefix(t.Addr, "unix://"):
		return nil, fmt.Errorf("isolator API %q: want a unix socket path or tls://HOST:PORT", t.Addr)
	}
	return Dial(ctx, strings.TrimPrefix(t.Addr, "unix://"))
}
