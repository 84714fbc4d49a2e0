package ipfix

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

// Exporter sends records to one or more collectors over UDP. It is safe
// for concurrent use.
type Exporter struct {
	mu    sync.Mutex
	enc   *Encoder
	conns []*net.UDPConn
	addrs []string

	// Counters for metrics.
	messages, records, errs atomic.Uint64
}

// NewExporter dials every collector ("host:port"); the same messages go to
// each. refresh is the template refresh interval (0: 60 s).
func NewExporter(ctx context.Context, collectors []string, refresh time.Duration) (*Exporter, error) {
	e := &Exporter{enc: NewEncoder(0, refresh)}
	var d net.Dialer
	for _, a := range collectors {
		c, err := d.DialContext(ctx, "udp", a)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("ipfix collector %s: %w", a, err)
		}
		e.conns = append(e.conns, c.(*net.UDPConn))
		e.addrs = append(e.addrs, a)
	}
	return e, nil
}

// Collectors returns the collector addresses.
func (e *Exporter) Collectors() []string { return slices.Clone(e.addrs) }

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
	for _, id := range order {
		msgs, err := e.enc.Encode(id, now, byDomain[id], ifaces, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, e.send(msgs))
		e.records.Add(uint64(len(byDomain[id])))
	}
	return errors.Join(errs...)
}

// Refresh sends templates and interface names to every domain in domains
// whose refresh is due, so that collectors know them before the first
// record and after a restart.
func (e *Exporter) Refresh(now time.Time, domains []uint32, ifaces []Interface) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for _, id := range domains {
		if !e.enc.TemplatesDue(id, now) {
			continue
		}
		msgs, err := e.enc.Encode(id, now, nil, ifaces, true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, e.send(msgs))
	}
	return errors.Join(errs...)
}

// Forget drops the state of a domain whose INS is gone.
func (e *Exporter) Forget(id uint32) {
	e.mu.Lock()
	e.enc.Forget(id)
	e.mu.Unlock()
}

func (e *Exporter) send(msgs [][]byte) error {
	var errs []error
	for _, m := range msgs {
		for i, c := range e.conns {
			if _, err := c.Write(m); err != nil {
				e.errs.Add(1)
				errs = append(errs, fmt.Errorf("ipfix collector %s: %w", e.addrs[i], err))
				continue
			}
			e.messages.Add(1)
		}
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
	for _, c := range e.conns {
		c.Close()
	}
	return nil
}
