package tunnel

import (
	"fmt"
	"io"
	"log"
	"time"

	"github.com/hashicorp/yamux"
)

// MuxConfig is the yamux configuration used over a session: a stream
// window large enough for one stream to fill the striped paths (the
// bandwidth-delay product of ~170 Mbit/s at ~100 ms is ~2 MiB), and
// keepalives left to the session's own probes.
func MuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.MaxStreamWindowSize = 16 << 20
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 30 * time.Second
	c.StreamOpenTimeout = 30 * time.Second
	c.AcceptBacklog = 4096
	c.LogOutput = nil
	c.Logger = log.New(io.Discard, "", 0)
	return c
}

// Mux runs yamux over the session: the initiator is the yamux client, the
// responder the server; both can open and accept streams.
func Mux(s *Session) (*yamux.Session, error) {
	var (
		m   *yamux.Session
		err error
	)
	if s.initiator {
		m, err = yamux.Client(s, MuxConfig())
	} else {
		m, err = yamux.Server(s, MuxConfig())
	}
	if err != nil {
		return nil, fmt.Errorf("tunnel: yamux: %w", err)
	}
	return m, nil
}
