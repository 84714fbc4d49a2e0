// Package dns is the stub resolver of an INS. An application under the shim
// cannot use glibc's resolver (its socket calls are out of the shim's reach,
// and the app's namespace may have no route out), so the shim sends every
// name lookup to the isolator, and an INS resolves it here: by asking the
// configured nameservers over the INS's own network stack — UDP first, TCP
// when an answer is truncated — following CNAME chains, keeping answers for
// their TTL, and treating every byte of every response as hostile.
package dns

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Status is the outcome of a lookup. The values are msgproto's
// ResolveOK..ResolveFail.
type Status int32

// Statuses.
const (
	// OK: the name resolved.
	OK Status = iota
	// NoName: the name does not exist (NXDOMAIN).
	NoName
	// NoData: the name exists but has no record of the wanted type.
	NoData
	// Again: no nameserver answered (timeouts, SERVFAIL, REFUSED,
	// responses that do not answer the query, no nameserver reachable).
	Again
	// Fail: the answers make no sense (a CNAME loop or a chain longer
	// than 8).
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case NoName:
		return "no such name"
	case NoData:
		return "no data"
	case Again:
		return "try again"
	case Fail:
		return "failed"
	}
	return fmt.Sprintf("status %d", int32(s))
}

// Family selects the addresses LookupHost asks for.
type Family int

// Families.
const (
	// Both asks for AAAA and A records (AAAA first in the result).
	Both Family = iota
	// IPv4 asks for A records.
	IPv4
	// IPv6 asks for AAAA records.
	IPv6
)

// Transport carries one query to one nameserver.
type Transport interface {
	// Exchange sends query to server and returns its response: over UDP
	// (stream false) the first datagram from server that carries the
	// query's id, over TCP one length-prefixed message. It gives up when
	// ctx ends.
	Exchange(ctx context.Context, server netip.AddrPort, stream bool, query []byte) ([]byte, error)
}

// Defaults of Config.
const (
	DefaultTimeout   = 2 * time.Second
	DefaultAttempts  = 2
	DefaultMaxTTL    = 5 * time.Minute
	DefaultMaxNegTTL = time.Minute
	DefaultCacheSize = 1024
)

// Config configures a Resolver. Zero fields take the defaults.
type Config struct {
	// Servers are the nameservers, asked in order.
	Servers []netip.AddrPort
	// Timeout bounds one query to one server.
	Timeout time.Duration
	// Attempts is the number of rounds over the servers.
	Attempts int
	// MaxTTL caps how long an answer is cached; MaxNegTTL caps a negative
	// answer (RFC 2308). A zero or negative CacheSize after defaults
	// means DefaultCacheSize entries.
	MaxTTL, MaxNegTTL time.Duration
	CacheSize         int
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
	// Logger receives diagnostics; nil means slog.Default().
	Logger *slog.Logger
}

// Result is the answer to a lookup.
type Result struct {
	Status Status
	// Name is the canonical name (the end of the CNAME chain) of a host
	// lookup, or the host name of an address lookup.
	Name string
	// Addrs are the addresses of a host lookup, AAAA before A.
	Addrs []netip.Addr
	// TTL is how long the answer stays valid.
	TTL time.Duration
}

// Resolver resolves names through a Transport. It is safe for concurrent
// use.
type Resolver struct {
	cfg Config
	t   Transport
	log *slog.Logger

	mu    sync.Mutex
	cache map[cacheKey]cacheEntry
}

type cacheKey struct {
	name string // lower case, no final dot
	t    dnsmessage.Type
}

type cacheEntry struct {
	res     Result
	aliased bool // res.Name is the end of a CNAME chain, not the name asked
	expires time.Time
}

// New returns a resolver that asks cfg.Servers through t.
func New(cfg Config, t Transport) *Resolver {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = DefaultAttempts
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	if cfg.MaxNegTTL <= 0 {
		cfg.MaxNegTTL = DefaultMaxNegTTL
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Servers = append([]netip.AddrPort(nil), cfg.Servers...)
	return &Resolver{cfg: cfg, t: t, log: cfg.Logger.With("component", "dns"), cache: map[cacheKey]cacheEntry{}}
}

// Servers returns the configured nameservers.
func (r *Resolver) Servers() []netip.AddrPort { return append([]netip.AddrPort(nil), r.cfg.Servers...) }

// LookupHost resolves name (one final dot allowed) to addresses of family.
// A name that cannot be asked for (empty, too long, empty labels, control
// bytes) is NoName without a query.
func (r *Resolver) LookupHost(ctx context.Context, name string, family Family) Result {
	name = strings.TrimSuffix(name, ".")
	if !validName(name) {
		return Result{Status: NoName}
	}
	switch family {
	case IPv4:
		return r.lookup(ctx, name, dnsmessage.TypeA)
	case IPv6:
		return r.lookup(ctx, name, dnsmessage.TypeAAAA)
	}
	var r6, r4 Result
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r6 = r.lookup(ctx, name, dnsmessage.TypeAAAA)
	}()
	r4 = r.lookup(ctx, name, dnsmessage.TypeA)
	wg.Wait()
	return combine(r6, r4)
}

// combine merges the AAAA and A answers for one name.
func combine(r6, r4 Result) Result {
	switch {
	case r6.Status == OK || r4.Status == OK:
		out := Result{Status: OK, Name: r6.Name, TTL: r6.TTL}
		if r6.Status != OK {
			out.Name, out.TTL = r4.Name, r4.TTL
		} else if r4.Status == OK {
			out.TTL = min(r6.TTL, r4.TTL)
		}
		out.Addrs = append(append(out.Addrs, r6.Addrs...), r4.Addrs...)
		return out
	case r6.Status == Again || r4.Status == Again:
		return Result{Status: Again}
	case r6.Status == NoName || r4.Status == NoName:
		return Result{Status: NoName, TTL: min(r6.TTL, r4.TTL)}
	case r6.Status == NoData && r4.Status == NoData:
		return Result{Status: NoData, TTL: min(r6.TTL, r4.TTL)}
	}
	return Result{Status: Fail}
}

// LookupAddr resolves an address to its host name (PTR).
func (r *Resolver) LookupAddr(ctx context.Context, a netip.Addr) Result {
	if !a.IsValid() {
		return Result{Status: NoName}
	}
	res := r.lookup(ctx, reverseName(a), dnsmessage.TypePTR)
	res.Addrs = nil
	return res
}

// lookup answers one name and type from the cache or the nameservers,
// following CNAMEs that lead out of a response.
func (r *Resolver) lookup(ctx context.Context, name string, t dnsmessage.Type) Result {
	k := cacheKey{lower(name), t}
	if res, aliased, ok := r.cached(k); ok {
		if res.Status == OK && t != dnsmessage.TypePTR && !aliased {
			// The canonical name of an unaliased name is the name as
			// asked, in the caller's spelling.
			res.Name = name
		}
		return res
	}
	res, ttl := r.resolve(ctx, name, t)
	r.store(k, res, !sameName(res.Name, name), ttl)
	if ttl > 0 {
		res.TTL = ttl
	}
	return res
}

// resolve asks the nameservers and returns the result and how long it may
// be cached (0: not at all).
func (r *Resolver) resolve(ctx context.Context, name string, t dnsmessage.Type) (Result, time.Duration) {
	ttl := uint32(maxTTL)
	cur := name
	for hop := 0; hop <= maxChain; hop++ {
		resp, st := r.query(ctx, cur, t)
		if st != OK {
			return Result{Status: st}, 0
		}
		ttl = min(ttl, resp.ttl)
		switch {
		case resp.rcode == dnsmessage.RCodeNameError:
			return Result{Status: NoName}, r.negative(resp)
		case len(resp.addrs) > 0:
			return Result{Status: OK, Name: resp.owner, Addrs: resp.addrs}, r.positive(ttl)
		case len(resp.names) > 0:
			return Result{Status: OK, Name: resp.names[0]}, r.positive(ttl)
		case resp.aliased && len(resp.names) == 0 && !resp.hasNeg:
			// The chain leaves this response: ask for its end.
			cur = resp.owner
			continue
		}
		return Result{Status: NoData}, r.negative(resp)
	}
	r.log.Debug("CNAME chain too long", "name", name, "type", t)
	return Result{Status: Fail}, 0
}

func (r *Resolver) positive(ttl uint32) time.Duration {
	return min(time.Duration(ttl)*time.Second, r.cfg.MaxTTL)
}

// negative is the caching time of NXDOMAIN or NODATA: the SOA's, or none
// without a SOA (RFC 2308 5).
func (r *Resolver) negative(resp response) time.Duration {
	if !resp.hasNeg {
		return 0
	}
	return min(time.Duration(resp.negTTL)*time.Second, r.cfg.MaxNegTTL)
}

// query asks every server in turn, Attempts rounds, until one gives an
// answer (NOERROR or NXDOMAIN). A truncated UDP answer is asked again over
// TCP. Like glibc's resolver it treats every other outcome — a timeout, a
// network error, SERVFAIL, REFUSED, NOTIMP, FORMERR, a response that does
// not answer the query — as a reason to try the next server, and ends in
// Again (EAI_AGAIN, TRY_AGAIN) when none answered.
func (r *Resolver) query(ctx context.Context, name string, t dnsmessage.Type) (response, Status) {
	for round := 0; round < r.cfg.Attempts; round++ {
		for _, srv := range r.cfg.Servers {
			if ctx.Err() != nil {
				return response{}, Again
			}
			resp, err := r.exchange(ctx, srv, name, t, false)
			if err == nil && resp.trunc {
				resp, err = r.exchange(ctx, srv, name, t, true)
				if err == nil && resp.trunc {
					err = fmt.Errorf("%w: truncated over TCP", errMalformed)
				}
			}
			switch {
			case err != nil:
				r.log.Debug("no answer", "server", srv, "name", name, "type", t, "err", err)
			case resp.rcode == dnsmessage.RCodeSuccess || resp.rcode == dnsmessage.RCodeNameError:
				return resp, OK
			default:
				r.log.Debug("answer refused", "server", srv, "name", name, "type", t, "rcode", resp.rcode)
			}
		}
	}
	return response{}, Again
}

// exchange sends one query and parses its answer.
func (r *Resolver) exchange(ctx context.Context, srv netip.AddrPort, name string, t dnsmessage.Type, stream bool) (response, error) {
	var idb [2]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return response{}, fmt.Errorf("dns: query id: %w", err)
	}
	id := binary.BigEndian.Uint16(idb[:])
	q, err := buildQuery(id, name, t)
	if err != nil {
		return response{}, fmt.Errorf("%w: %v", errMalformed, err)
	}
	qctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	msg, err := r.t.Exchange(qctx, srv, stream, q)
	if err != nil {
		return response{}, fmt.Errorf("dns: %s: %w", srv, err)
	}
	return parseResponse(msg, id, name, t)
}

func (r *Resolver) cached(k cacheKey) (Result, bool, bool) {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[k]
	if !ok {
		return Result{}, false, false
	}
	if !now.Before(e.expires) {
		delete(r.cache, k)
		return Result{}, false, false
	}
	res := e.res
	res.Addrs = append([]netip.Addr(nil), e.res.Addrs...)
	res.TTL = e.expires.Sub(now).Truncate(time.Second)
	return res, e.aliased, true
}

func (r *Resolver) store(k cacheKey, res Result, aliased bool, ttl time.Duration) {
	if ttl <= 0 || (res.Status != OK && res.Status != NoName && res.Status != NoData) {
		return
	}
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.cfg.CacheSize {
		for ck, e := range r.cache {
			if !now.Before(e.expires) {
				delete(r.cache, ck)
			}
		}
		// Still full: drop an arbitrary entry (map order).
		for ck := range r.cache {
			if len(r.cache) < r.cfg.CacheSize {
				break
			}
			delete(r.cache, ck)
		}
	}
	res.Addrs = append([]netip.Addr(nil), res.Addrs...)
	r.cache[k] = cacheEntry{res: res, aliased: aliased, expires: now.Add(ttl)}
}
