package ring

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"sync/atomic"
	"unsafe"
)

// scribble maps the memfd of a ring a second time, as a malicious app
// would, and writes random words, indices and lengths until stop closes.
func scribble(t *testing.T, fd uintptr, size int, seed uint64, recordsOnly bool, stop <-chan struct{}) {
	mem, err := unix.Mmap(int(fd), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Errorf("mapping ring for scribbling: %v", err)
		return
	}
	defer unix.Munmap(mem)
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		c := rng.IntN(6)
		if recordsOnly && c < 2 {
			c = 2
		}
		switch c {
		case 0: // reservation index
			binary.LittleEndian.PutUint64(mem[OffReserve:], rng.Uint64N(1<<24))
		case 1: // consumer state and dead words
			binary.LittleEndian.PutUint32(mem[OffConsState:], rng.Uint32N(4))
		case 2: // a plausible-looking commit word somewhere in the request ring
			off := HeaderSize + rng.IntN(size-HeaderSize-8)&^7
			if off+4 < len(mem) {
				binary.LittleEndian.PutUint32(mem[off:], rng.Uint32N(1<<16))
			}
		default: // random bytes anywhere past the header
			off := HeaderSize + rng.IntN(size-HeaderSize-64)
			for j := 0; j < 64; j++ {
				mem[off+j] = byte(rng.Uint32())
			}
		}
		if i%64 == 0 {
			// A hostile app can also wake the consumer at will.
			futexWakeN((*uint32)(unsafe.Pointer(&mem[OffConsState])), 1)
			time.Sleep(50 * time.Microsecond)
		}
	}
}

// TestHostileWriterIsolated serves two rings from one process: ring A is
// scribbled over by a hostile writer, ring B carries a correct C producer.
// A must fault with ErrCorrupt (no panic, no hang) while B keeps serving.
func TestHostileWriterIsolated(t *testing.T) {
	for _, tc := range []struct {
		name        string
		recordsOnly bool
	}{{"indices and records", false}, {"records only", true}} {
		t.Run(tc.name, func(t *testing.T) { testHostile(t, tc.recordsOnly) })
	}
}

func testHostile(t *testing.T, recordsOnly bool) {
	buildProducer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cfgA := Config{ReqSize: 16 << 10, Slots: 8, SlotSize: 1024, StallTimeout: 200 * time.Millisecond}
	a, fa, err := Create(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer fa.Close()
	b, fb, err := Create(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	const threads, perThread = 4, 100_000
	cmd, out := startProducer(t, fb, "load", strconv.Itoa(threads), strconv.Itoa(perThread))
	fb.Close()

	var servedB sync.WaitGroup
	var bCount uint64
	var bErr error
	var bServed atomic.Uint64
	servedB.Add(1)
	go func() {
		defer servedB.Done()
		s := &loadServer{r: b, nextSeq: map[uint32]uint64{}, async: make(chan asyncReply, 1)}
		go func() {
			for a := range s.async {
				b.Reply(a.slot, a.data)
			}
		}()
		defer close(s.async)
		for s.n < threads*perThread {
			req, err := b.Next(ctx)
			if err == nil {
				err = s.handle(req)
			}
			if err != nil {
				bErr = err
				return
			}
			bServed.Store(s.n)
		}
		bCount = s.n
	}()

	// Let B get going, then serve A while scribbling into it.
	for bServed.Load() < 1000 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	stop := make(chan struct{})
	var scribbler sync.WaitGroup
	scribbler.Add(1)
	go func() {
		defer scribbler.Done()
		scribble(t, fa.Fd(), int(regionSize(a.cfg)), 42, recordsOnly, stop)
	}()
	var aErr error
	aServed := 0
	for {
		req, err := a.Next(ctx)
		if err != nil {
			aErr = err
			break
		}
		aServed++
		a.Reply(req.Slot, bytes.Repeat(req.Data, 1)[:min(len(req.Data), 100)])
	}
	bAtFault := bServed.Load()
	close(stop)
	scribbler.Wait()
	if !errors.Is(aErr, ErrCorrupt) {
		t.Fatalf("scribbled ring: Next = %v after %d requests, want ErrCorrupt", aErr, aServed)
	}
	t.Logf("scribbled ring faulted after %d bogus requests: %v", aServed, aErr)

	servedB.Wait()
	if err := cmd.Wait(); err != nil || bErr != nil {
		t.Fatalf("healthy ring: serve error %v, producer %v\n%s", bErr, err, out)
	}
	if bCount != threads*perThread {
		t.Fatalf("healthy ring served %d of %d", bCount, threads*perThread)
	}
	if bAtFault >= bCount {
		t.Fatalf("the healthy ring had finished (%d requests) before the fault: the test shows nothing", bAtFault)
	}
	t.Logf("healthy ring kept serving: %d of %d requests were answered after the fault", bCount-bAtFault, bCount)
}
