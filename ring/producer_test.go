package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// newPair makes a ring and attaches a Go producer to it.
func newPair(t *testing.T, cfg Config) (*Ring, *Producer) {
	t.Helper()
	r, f, err := Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Attach(f)
	f.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); r.Close() })
	return r, p
}

// echoServer answers every request with its payload reversed, each reply
// from its own goroutine after a random short delay so that replies come
// out of order. seen records, per caller, the sequence numbers in arrival
// order.
func echoServer(ctx context.Context, t *testing.T, r *Ring, seen map[uint32][]uint32, mu *sync.Mutex) <-chan error {
	done := make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		defer func() { wg.Wait() }()
		for {
			req, err := r.Next(ctx)
			if err != nil {
				done <- err
				return
			}
			data := append([]byte(nil), req.Data...)
			if len(data) >= 8 {
				mu.Lock()
				g := binary.LittleEndian.Uint32(data)
				seen[g] = append(seen[g], binary.LittleEndian.Uint32(data[4:]))
				mu.Unlock()
			}
			wg.Add(1)
			go func(slot uint32) {
				defer wg.Done()
				if rand.IntN(4) == 0 {
					time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
				}
				out := make([]byte, len(data))
				for i := range data {
					out[len(data)-1-i] = data[i]
				}
				if err := r.Reply(slot, out); err != nil {
					t.Errorf("reply: %v", err)
				}
			}(req.Slot)
		}
	}()
	return done
}

func TestProducerConcurrent(t *testing.T) {
	// A small request ring forces wrap-around, padding records and waits
	// for space; few slots force callers to queue for a slot.
	r, p := newPair(t, Config{ReqSize: 4096, Slots: 8, SlotSize: 4096})
	ctx, cancel := context.WithCancel(context.Background())
	seen := map[uint32][]uint32{}
	var mu sync.Mutex
	done := echoServer(ctx, t, r, seen, &mu)

	const goroutines, calls = 32, 300
	var wg sync.WaitGroup
	for g := range uint32(goroutines) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := make([]byte, 2048)
			for i := range uint32(calls) {
				req := make([]byte, 8+rand.IntN(900))
				binary.LittleEndian.PutUint32(req, g)
				binary.LittleEndian.PutUint32(req[4:], i)
				for k := 8; k < len(req); k++ {
					req[k] = byte(k ^ int(i))
				}
				n, err := p.Call(req, resp)
				if err != nil {
					t.Errorf("caller %d call %d: %v", g, i, err)
					return
				}
				if n != len(req) {
					t.Errorf("caller %d call %d: reply %d bytes, want %d", g, i, n, len(req))
					return
				}
				for k := range req {
					if resp[n-1-k] != req[k] {
						t.Errorf("caller %d call %d: reply is not the reversed request (byte %d)", g, i, k)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("consumer ended with %v", err)
	}
	for g := range uint32(goroutines) {
		got := seen[g]
		if len(got) != calls {
			t.Fatalf("caller %d: consumer saw %d requests, want %d", g, len(got), calls)
		}
		for i, v := range got {
			if v != uint32(i) {
				t.Fatalf("caller %d: request %d arrived as number %d (lost, duplicated or reordered)", g, v, i)
			}
		}
	}
	st := r.Stats()
	if st.Requests != goroutines*calls || st.Replies != goroutines*calls {
		t.Fatalf("stats %+v, want %d requests and replies", st, goroutines*calls)
	}
	t.Logf("stats: %+v", st)
}

func TestProducerLimits(t *testing.T) {
	r, p := newPair(t, Config{ReqSize: 4096, Slots: 2, SlotSize: 256})
	if _, err := p.Call(make([]byte, p.MaxRequest()+1), nil); !errors.Is(err, ErrRequestTooLarge) {
		t.Fatalf("oversized request: %v, want ErrRequestTooLarge", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			req, err := r.Next(ctx)
			if err != nil {
				return
			}
			r.Reply(req.Slot, make([]byte, 100))
		}
	}()
	n, err := p.Call(make([]byte, p.MaxRequest()), make([]byte, 10))
	if !errors.Is(err, ErrReplyTooLarge) || n != 100 {
		t.Fatalf("short reply buffer: n=%d err=%v, want 100 and ErrReplyTooLarge", n, err)
	}
	if n, err := p.Call([]byte("x"), make([]byte, 100)); err != nil || n != 100 {
		t.Fatalf("call after a too-large reply: n=%d err=%v", n, err)
	}
}

func TestProducerDeadRing(t *testing.T) {
	r, p := newPair(t, Config{ReqSize: 4096, Slots: 4, SlotSize: 256})
	// Nobody consumes: the calls wait until the consumer side closes.
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := p.Call([]byte("hello"), make([]byte, 64))
			errs <- err
		}()
	}
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	r.Close()
	for range 3 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrDead) {
				t.Fatalf("call on a closed ring: %v, want ErrDead", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("call still waiting 2 s after the consumer closed the ring")
		}
	}
	t.Logf("waiting calls failed %v after the consumer closed", time.Since(start))
	if _, err := p.Call([]byte("x"), nil); !errors.Is(err, ErrDead) {
		t.Fatalf("call after death: %v", err)
	}
	if !p.Dead() {
		t.Fatal("Dead() is false on a dead ring")
	}
}

func TestProducerCloseWakesCallers(t *testing.T) {
	_, p := newPair(t, Config{ReqSize: 4096, Slots: 4, SlotSize: 256})
	errc := make(chan error, 1)
	go func() {
		_, err := p.Call([]byte("hello"), nil)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrDead) {
			t.Fatalf("call ended with %v, want ErrDead", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Close did not end a waiting call")
	}
}

func TestAttachRejectsBadHeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		off  uint64
		val  uint32
	}{
		{"magic", OffMagic, 0x1234},
		{"version", OffVersion, Version + 1},
		{"slot count", OffSlotCount, MaxSlotCount + 1},
		{"slot size", OffSlotSize, 100},
		{"max request", OffMaxReq, 1 << 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, f, err := Create(Config{ReqSize: 4096, Slots: 4, SlotSize: 256})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer f.Close()
			*r.u32(tc.off) = tc.val
			if p, err := Attach(f); !errors.Is(err, ErrCorrupt) {
				if p != nil {
					p.Close()
				}
				t.Fatalf("Attach with a bad %s: %v, want ErrCorrupt", tc.name, err)
			}
		})
	}
}

func BenchmarkProducerCall(b *testing.B) {
	r, f, err := Create(Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	p, err := Attach(f)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Serve(ctx, func(req Request) { r.Reply(req.Slot, req.Data) })
	req := []byte(fmt.Sprintf("%040d", 7))
	resp := make([]byte, 64)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := p.Call(req, resp); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
