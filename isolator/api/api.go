// Package api is the isolator daemon's management interface: the requests
// the CLIs send (spawn, ls, kill, uplink add/del/ls) and the replies they get,
// as one JSON object per line over a unix stream socket. Every request is
// answered, with OK or with an error that says what went wrong.
package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/split/gateway"
)

// Operations understood by the daemon.
const (
	OpSpawn      = "spawn"
	OpList       = "ls"
	OpKill       = "kill"
	OpUplinkAdd  = "uplink-add"
	OpUplinkDel  = "uplink-del"
	OpUplinkList = "uplink-ls"
	// OpSandboxProbe has every INS attempt the acts its sandbox forbids
	// and report how each ended. It is hidden: the daemon refuses it
	// unless the environment variable MPSHIM_SANDBOX_PROBE=1 was set when
	// it started, which only tests do.
	OpSandboxProbe = "sandbox-probe"
)

// MaxLine bounds one request or reply line.
const MaxLine = 1 << 20

// Request is one management request.
type Request struct {
	Op     string         `json:"op"`
	N      int            `json:"n,omitempty"`
	ID     int            `json:"id,omitempty"`
	Name   string         `json:"name,omitempty"`
	Uplink *config.Uplink `json:"uplink,omitempty"`
	// Mitigation carries the arguments of the mitigation ops (mitigate.go).
	Mitigation *MitigationRequest `json:"mitigation,omitempty"`
	// TimeoutMS bounds the drain of uplink-del (0: DefaultDrainTimeout).
	TimeoutMS int64      `json:"timeout_ms,omitempty"`
	Flows     *FlowQuery `json:"flows,omitempty"`
	// PeerAdd carries the arguments of OpPeerAdd (split.go).
	PeerAdd *PeerAddRequest `json:"peer_add,omitempty"`
	// GC, on OpList, has the daemon and every INS collect garbage and
	// return the freed memory to the system first, so that RSS shows what
	// is live (a leak check, not a thing to do often: it costs a full
	// collection in each process).
	GC bool `json:"gc,omitempty"`
}

// Response answers one request.
type Response struct {
	OK      bool         `json:"ok"`
	Error   string       `json:"error,omitempty"`
	INS     []INSInfo    `json:"ins,omitempty"`
	Uplinks []UplinkInfo `json:"uplinks,omitempty"`
	// Mitigation answers the mitigation ops (mitigate.go).
	Mitigation *MitigationReply `json:"mitigation,omitempty"`
	// Change reports what uplink-add or uplink-del did.
	Change *UplinkChange `json:"change,omitempty"`
	Flows  *FlowPage     `json:"flows,omitempty"`
	// Probes answers OpSandboxProbe, one per INS.
	Probes []SandboxProbe `json:"probes,omitempty"`
	// LB answers OpLBStatus (lb.go).
	LB *LBStatus `json:"lb,omitempty"`
	// Split answers OpSplitStatus (split.go).
	Split []gateway.PeerStatus `json:"split,omitempty"`
}

// SandboxProbe is what one INS reported for OpSandboxProbe: each act it
// tried and "ok" (the act succeeded) or the errno it failed with.
type SandboxProbe struct {
	ID      int           `json:"id"`
	Results []ProbeResult `json:"results"`
	Error   string        `json:"error,omitempty"`
}

// ProbeResult is one act of a SandboxProbe.
type ProbeResult struct {
	Act    string `json:"act"`
	Result string `json:"result"`
}

// INSInfo describes one INS process.
type INSInfo struct {
	ID          int         `json:"id"`
	PID         int         `json:"pid"`
	State       string      `json:"state"`
	NetNS       string      `json:"netns"`
	Uplinks     []INSUplink `json:"uplinks"`
	Sockets     int         `json:"sockets"`
	Connections int         `json:"connections"`
	RSS         uint64      `json:"rss_bytes"`
	// TCP counts the INS's TCP endpoints by state, those the app closed
	// and TIME_WAIT among them.
	TCP     map[string]int `json:"tcp,omitempty"`
	RxBytes uint64         `json:"rx_bytes"`
	TxBytes uint64         `json:"tx_bytes"`
	Started time.Time      `json:"started"`
	// Restarts counts the times the daemon replaced a dead INS of this id;
	// LastExit says how the last one ended ("killed by signal 9
	// (killed)", "exit status 2") and LastExitAt when.
	Restarts   int       `json:"restarts"`
	LastExit   string    `json:"last_exit,omitempty"`
	LastExitAt time.Time `json:"last_exit_at,omitzero"`
}

// INSUplink is one NIC of an INS.
type INSUplink struct {
	Name      string `json:"name"`
	Addr4     string `json:"addr4,omitempty"`
	Addr6     string `json:"addr6,omitempty"`
	State     string `json:"state,omitempty"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
}

// UplinkInfo describes one configured uplink.
type UplinkInfo struct {
	config.Uplink
	// State is up, down (no carrier on the interface, or down in every
	// INS) or draining (being removed).
	State string `json:"state"`
	// Carrier is the host interface's carrier as the daemon sees it.
	Carrier bool `json:"carrier"`
	// INS counts the INS with a NIC on the uplink, INSUp those where it
	// takes new flows.
	INS   int `json:"ins"`
	INSUp int `json:"ins_up"`
	// Conns counts the live TCP connections on the uplink, all INS.
	Conns   int    `json:"conns"`
	RxBytes uint64 `json:"rx_bytes"`
	TxBytes uint64 `json:"tx_bytes"`
}

// DefaultDrainTimeout is how long uplink-del waits for the connections on
// an uplink to end before it removes the uplink anyway.
const DefaultDrainTimeout = 30 * time.Second

// UplinkChange reports an uplink-add or uplink-del.
type UplinkChange struct {
	Name string `json:"name"`
	// Action is "added" or "removed".
	Action string `json:"action"`
	// Drained (uplink-del) is true when every connection on the uplink
	// ended before the timeout; otherwise Results say how many were cut.
	Drained bool `json:"drained,omitempty"`
	// WaitedMS is how long uplink-del waited for the drain.
	WaitedMS int64 `json:"waited_ms,omitempty"`
	// Results has one entry per INS the change applied to.
	Results []UplinkResult `json:"results"`
}

// UplinkResult is the outcome of an uplink change on one INS.
type UplinkResult struct {
	INS   int    `json:"ins"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Addr4 and Addr6 are the INS's addresses on the uplink (given by
	// uplink-add, returned to the pool by uplink-del).
	Addr4 string `json:"addr4,omitempty"`
	Addr6 string `json:"addr6,omitempty"`
	// Conns (uplink-del) is the number of connections still on the uplink
	// when it was removed from this INS: they were cut.
	Conns int `json:"conns,omitempty"`
}

// Handler answers requests.
type Handler func(ctx context.Context, req Request) Response

// Errorf builds a failed Response.
func Errorf(format string, args ...any) Response {
	return Response{Error: fmt.Sprintf(format, args...)}
}

// Serve answers requests on ln until ctx ends. Each connection may send
// any number of requests; a malformed line is answered with an error and
// the connection closed.
func Serve(ctx context.Context, ln net.Listener, h Handler, log *slog.Logger) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("api: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveConn(ctx, c, h, log)
		}()
	}
}

func serveConn(ctx context.Context, c net.Conn, h Handler, log *slog.Logger) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), MaxLine)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		var req Request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			_ = enc.Encode(Errorf("bad request: %v", err))
			return
		}
		resp := h(ctx, req)
		if err := enc.Encode(resp); err != nil {
			log.Debug("api: reply", "err", err)
			return
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, net.ErrClosed) {
		_ = enc.Encode(Errorf("bad request: %v", err))
	}
}

// Client talks to a daemon's API socket.
type Client struct {
	conn net.Conn
	sc   *bufio.Scanner
	mu   sync.Mutex
}

// Dial connects to the API socket at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("isolator API %s: %w (is `isolator run` running, and are you allowed to use its socket?)", path, err)
		}
		return nil, fmt.Errorf("isolator API %s: %w", path, err)
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), MaxLine)
	return &Client{conn: c, sc: sc}, nil
}

// Call sends one request and waits for its reply. A reply with an error is
// returned as an error.
func (c *Client) Call(ctx context.Context, req Request) (Response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
	} else {
		_ = c.conn.SetDeadline(time.Time{})
	}
	if err := json.NewEncoder(c.conn).Encode(req); err != nil {
		return Response{}, fmt.Errorf("isolator API: send %s: %w", req.Op, err)
	}
	if !c.sc.Scan() {
		err := c.sc.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return Response{}, fmt.Errorf("isolator API: reply to %s: %w", req.Op, err)
	}
	var resp Response
	if err := json.Unmarshal(c.sc.Bytes(), &resp); err != nil {
		return Response{}, fmt.Errorf("isolator API: reply to %s: %w", req.Op, err)
	}
	if !resp.OK {
		return resp, fmt.Errorf("%s: %s", req.Op, resp.Error)
	}
	return resp, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
