package ipfix

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

// Export formats.
const (
	FormatIPFIX    = "ipfix"
	FormatNetFlow9 = "netflow9"
)

// Collector is where records go and in which format.
type Collector struct {
	// Addr is "host:port" (UDP).
	Addr string
	// Format is FormatIPFIX or FormatNetFlow9.
	Format string
}

// encoder is an IPFIX or a NetFlow v9 encoder.
type encoder interface {
	Encode(id uint32, now time.Time, recs []netflow.ExportRecord, ifaces []Interface, templates bool) ([][]byte, error)
	TemplatesDue(id uint32, now time.Time) bool
	Forget(id uint32)
}

type target struct {
	Collector
	conn *net.UDPConn
	enc  encoder
}

// Exporter sends records to one or more collectors over UDP, each with its
// own format, sequence numbers and template schedule. It is safe for
// concurrent use.
type Exporter struct {
	mu      sync.Mutex
	targets []target

	// Counters for metrics.
	messages, records, errs atomic.Uint64
}

// NewExporter dials every collector. refresh is the template refresh
// interval (0: 60 s).
func NewExporter(ctx context.Context, collectors []Collector, refresh time.Duration) (*Exporter, error) {
	e := &Exporter{}
	boot := time.Now()
	var d net.Dialer
	for _, col := range collectors {
		var enc encoder
		switch col.Format {
		case FormatIPFIX, "":
			col.Format, enc = FormatIPFIX, NewEncoder(0, refresh)
		case FormatNetFlow9:
			enc = NewV9Encoder(0, refresh, boot)
		default:
			e.Close()
			return nil, fmt.Errorf("flow collector %s: unknown format %q (ipfix, netflow9)", col.Addr, col.Format)
		}
		c, err := d.DialContext(ctx, "udp", col.Addr)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("%s collector %s: %w", col.Format, col.Addr, err)
		}
		e.targets = append(e.targets, target{Collector: col, conn: c.(*net.UDPConn), enc: enc})
	}
	return e, nil
}

// Collectors returns the collectors.
func (e *Exporter) Collectors() []Collector {
	out := make([]Collector, len(e.targets))
	for i, t := range e.targets {
		out[i] = t.Collector
	}
	return out
}

// Export sends recs at now, each domain's after its templates when they are
// due. ifaces names the uplinks. Sending errors are counted and returned
// (joined); a collector that is down does not stop the others.
func (e *Exporter) Export(now time.Time, recs []netflow.ExportRecord, ifaces []Interface) error {
	byDomain := map[uint32][]netflow.ExportRecord{}
	var order []uint32
	for _, r := range recs {
		if _, ok := byDomain[r.Domain]; !ok {
			order = append(order, r.Domain)
		}
		byDomain[r.Domain] = append(byDomain[r.Domain], r)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for i := range e.targets {
		t := &e.targets[i]
		for _, id := range order {
			msgs, err := t.enc.Encode(id, now, byDomain[id], ifaces, false)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			errs = append(errs, e.send(t, msgs))
		}
	}
	e.records.Add(uint64(len(recs)))
	return errors.Join(errs...)
}

// Refresh sends templates and interface names to every domain in domains
// whose refresh is due, so that collectors know them before the first
// record and after a restart.
func (e *Exporter) Refresh(now time.Time, domains []uint32, ifaces []Interface) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for i := range e.targets {
		t := &e.targets[i]
		for _, id := range domains {
			if !t.enc.TemplatesDue(id, now) {
				continue
			}
			msgs, err := t.enc.Encode(id, now, nil, ifaces, true)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			errs = append(errs, e.send(t, msgs))
		}
	}
	return errors.Join(errs...)
}

// Forget drops the state of a domain whose INS is gone.
func (e *Exporter) Forget(id uint32) {
	e.mu.Lock()
	for _, t := range e.targets {
		t.enc.Forget(id)
	}
	e.mu.Unlock()
}

func (e *Exporter) send(t *target, msgs [][]byte) error {
	var errs []error
	for _, m := range msgs {
		if _, err := t.conn.Write(m); err != nil {
			e.errs.Add(1)
			errs = append(errs, fmt.Errorf("%s collector %s: %w", t.Format, t.Addr, err))
			continue
		}
		e.messages.Add(1)
	}
	return errors.Join(errs...)
}

// Stats are the exporter's counters: messages sent (per collector),
// records exported, and send errors.
func (e *Exporter) Stats() (messages, records, errs uint64) {
	return e.messages.Load(), e.records.Load(), e.errs.Load()
}

// Close closes the sockets.
func (e *Exporter) Close() error {
	for _, t := range e.targets {
		t.conn.Close()
	}
	return nil
}
